"""Rarely seen but valid bundles: Snappy-compressed index blocks and big-endian data."""

from __future__ import annotations

import builtins
import struct

import numpy as np
import pytest

import distrestore as dr
from distrestore.format import crc, sstable
from distrestore.format.messages import BIG, encode_entry, encode_header
from distrestore.format.strings import encode_strings
from distrestore.format.wire import encode_varint


def _snappy_table(items) -> bytes:
    """A one-data-block table whose data block is Snappy-compressed (type byte 1)."""
    cramjam = pytest.importorskip("cramjam")
    block = sstable._BlockBuilder(16)
    for k, v in items:
        block.add(k, v)
    raw = block.finish()
    comp = bytes(cramjam.snappy.compress_raw(raw))
    out = bytearray(comp)
    out += b"\x01" + struct.pack("<I", crc.mask(crc.value(comp + b"\x01")))
    data_handle = encode_varint(0) + encode_varint(len(comp))
    index = sstable._BlockBuilder(1)
    index.add(items[-1][0], data_handle)
    idx_raw = index.finish()
    meta_raw = sstable._BlockBuilder(16).finish()
    handles = []
    for contents in (meta_raw, idx_raw):
        handles.append(encode_varint(len(out)) + encode_varint(len(contents)))
        out += contents + b"\x00" + struct.pack("<I", crc.mask(crc.value(contents + b"\x00")))
    footer = handles[0] + handles[1]
    footer += b"\x00" * (40 - len(footer)) + struct.pack("<II", sstable.MAGIC & 0xFFFFFFFF, sstable.MAGIC >> 32)
    return bytes(out + footer)


def _write(prefix, index_bytes: bytes, data: bytes) -> None:
    with open(prefix + ".index", "wb") as f:
        f.write(index_bytes)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(data)


def test_snappy_compressed_index_is_read(tmp_path):
    value = np.arange(6, dtype=np.float32)
    data = value.tobytes()
    items = [(b"", encode_header(1)), (b"x", encode_entry(1, (2, 3), 0, 0, len(data), crc.mask(crc.value(data))))]
    prefix = str(tmp_path / "snappy")
    _write(prefix, _snappy_table(items), data)
    assert dr.list_variables(prefix) == [("x", [2, 3])]
    np.testing.assert_array_equal(dr.load_variable(prefix, "x"), value.reshape(2, 3))


def test_snappy_without_cramjam_is_refused_clearly(tmp_path, monkeypatch):
    items = [(b"", encode_header(1)), (b"x", encode_entry(1, (1,), 0, 0, 4, 0))]
    prefix = str(tmp_path / "snappy")
    _write(prefix, _snappy_table(items), b"\0" * 4)
    real_import = builtins.__import__

    def no_cramjam(name, *args, **kwargs):
        if name == "cramjam":
            raise ImportError("no cramjam here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cramjam)
    with pytest.raises(dr.UnsupportedCheckpointError, match="Snappy.*cramjam") as info:
        dr.list_variables(prefix)
    assert prefix + ".index" in str(info.value)


def test_big_endian_bundle_is_byte_swapped(tmp_path):
    """A bundle written on a big-endian machine (header endianness BIG): numbers are stored
    big-endian and their CRC covers the stored bytes; strings are unaffected."""
    f = np.arange(12, dtype=">f4").reshape(3, 4)
    i = np.array([1, -2, 3 << 40], dtype=">i8")
    words, words_crc = encode_strings([b"ab", b"", b"\xff"])
    blobs = [f.tobytes(), i.tobytes(), words]
    entries, offset = [], 0
    for name, dt, shape, blob, checksum in [
        (b"f", 1, (3, 4), blobs[0], None),
        (b"i", 9, (3,), blobs[1], None),
        (b"s", 7, (3,), blobs[2], words_crc),
    ]:
        checksum = checksum if checksum is not None else crc.mask(crc.value(blob))
        entries.append((name, encode_entry(dt, shape, 0, offset, len(blob), checksum)))
        offset += len(blob)
    prefix = str(tmp_path / "big")
    _write(prefix, sstable.build_table([(b"", encode_header(1, BIG))] + entries), b"".join(blobs))
    out = dr.restore_tensors(prefix)
    np.testing.assert_array_equal(out["f"], f.astype("<f4"))
    np.testing.assert_array_equal(out["i"], i.astype("<i8"))
    assert out["f"].dtype == np.float32 and out["f"].dtype.byteorder in "=<"
    assert list(out["s"]) == [b"ab", b"", b"\xff"]
    # a region of a big-endian tensor
    np.testing.assert_array_equal(
        dr.load_checkpoint(prefix).get_slice("f", (slice(1, 3), slice(0, 2))), f.astype("<f4")[1:3, 0:2]
    )
    # a flipped byte is still caught (the CRC is over the stored big-endian bytes)
    raw = bytearray(b"".join(blobs))
    raw[5] ^= 0x10
    _write(prefix, open(prefix + ".index", "rb").read(), bytes(raw))
    with pytest.raises(dr.ChecksumMismatchError, match="'f'"):
        dr.restore_tensors(prefix, ["f"])
