"""String tensors (``distrestore.format.strings``): layout, checksums, TF-written bytes.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import struct

import pytest
from format_support import FIXTURES, SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from distrestore.errors import ChecksumMismatchError, CorruptCheckpointError
from distrestore.format import crc, messages, sstable, strings
from distrestore.format.wire import encode_varint

STRINGS = [b"", b"\x00", b"\xff\xfe", "héllo wörld".encode(), b"x" * 301, b"a\x00b"]


def test_strings_layout_and_both_checksums():
    data, entry_crc = strings.encode_strings([b"ab", b"", b"xyz"])
    lens = bytes.fromhex("02 00 03")
    len_crc = crc.mask(crc.value(struct.pack("<III", 2, 0, 3)))
    assert data == lens + struct.pack("<I", len_crc) + b"abxyz"
    running = crc.value(struct.pack("<III", 2, 0, 3))
    assert entry_crc == crc.mask(crc.value(struct.pack("<I", len_crc) + b"abxyz", running))


def test_empty_string_tensor_is_four_bytes():
    data, c = strings.encode_strings([])
    assert len(data) == 4
    out = strings.decode_strings(data, 0, (0,), stored_crc=c, where="t")
    assert out.shape == (0,) and out.dtype == object


@SETTINGS
@given(st.lists(st.binary(max_size=400), max_size=12))
def test_strings_round_trip(values):
    data, c = strings.encode_strings(values)
    out = strings.decode_strings(data, len(values), (len(values),), stored_crc=c, where="t")
    assert list(out) == values


def test_strings_long_values():
    values = [b"\x01" * 70_000, b"", b"\xff" * 300]
    data, c = strings.encode_strings(values)
    assert data[:3] == encode_varint(70_000)
    out = strings.decode_strings(data, 3, (3,), stored_crc=c, where="t")
    assert list(out) == values


def test_strings_corrupt_length_checksum():
    data, c = strings.encode_strings(STRINGS)
    bad = bytearray(data)
    n_len = len(b"".join(encode_varint(len(s)) for s in STRINGS))
    bad[n_len] ^= 0x01  # first byte of the stored length checksum
    with pytest.raises(ChecksumMismatchError, match="length"):
        strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=c, where="t 'x'")


def test_strings_corrupt_body_checksum():
    data, c = strings.encode_strings(STRINGS)
    bad = bytearray(data)
    bad[-1] ^= 0x01
    with pytest.raises(ChecksumMismatchError, match="where-it-is"):
        strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=c, where="where-it-is")
    # without verification, the corrupt bytes come back as they are
    out = strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=None, where="t")
    assert out[-1] != STRINGS[-1]


def test_strings_wrong_size_is_corrupt():
    data, c = strings.encode_strings([b"abc"])
    with pytest.raises(CorruptCheckpointError):
        strings.decode_strings(data + b"x", 1, (1,), stored_crc=c, where="t")
    with pytest.raises(CorruptCheckpointError):
        strings.decode_strings(data[:3], 1, (1,), stored_crc=c, where="t")


def test_string_encoding_matches_tf_written_bytes():
    """Our encoder reproduces TF's data bytes and entry CRC for every string tensor in a fixture."""
    prefix = FIXTURES / "all_dtypes" / "all"
    items = dict(sstable.read_table((FIXTURES / "all_dtypes" / "all.index").read_bytes(), "all.index"))
    blob = (FIXTURES / "all_dtypes" / "all.data-00000-of-00001").read_bytes()
    checked = 0
    for key, raw in items.items():
        if not key:
            continue
        e = messages.decode_entry(key.decode(), raw)
        if not e.dtype.is_string:
            continue
        stored = blob[e.offset : e.offset + e.size]
        values = strings.decode_strings(stored, e.num_elements, e.shape, stored_crc=e.crc32c, where=str(prefix))
        data, c = strings.encode_strings(values.reshape(-1).tolist())
        assert data == stored and c == e.crc32c, key
        checked += 1
    assert checked >= 6
