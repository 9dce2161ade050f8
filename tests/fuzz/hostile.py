"""Builders for hostile checkpoints: index files assembled block by block with valid checksums
around whatever the blocks, handles and entries claim, so that every check after the CRC is
reached. Used by the named catalogue (tests/test_hostile_index.py) and the fuzz generators."""

from __future__ import annotations

import struct
from typing import NamedTuple

from distrestore.format import crc, sstable
from distrestore.format.messages import encode_entry, encode_header
from distrestore.format.slices import slice_key
from distrestore.format.wire import LENGTH, VARINT, encode_varint, field


class Case(NamedTuple):
    """One hostile checkpoint: the index bytes and its data files (file-name suffix -> bytes,
    e.g. ``".data-00000-of-00001"``), written under a prefix by the worker."""

    index: bytes
    data: tuple[tuple[str, bytes], ...] = ()
    label: str = ""

    @property
    def nbytes(self) -> int:
        return len(self.index) + sum(len(d) for _, d in self.data)


def data_name(shard: int, num_shards: int) -> str:
    return f".data-{shard:05d}-of-{num_shards:05d}"


def varint(value: int) -> bytes:
    """LEB128 of any non-negative integer, however many bytes it takes (negatives: 10 bytes)."""
    return encode_varint(value)


def entry(dtype=1, shape=(), shard=0, offset=0, size=0, crc32c=0, slices=(), extra=b"") -> bytes:
    """A BundleEntryProto, fields as TF writes them, then ``extra`` raw bytes."""
    return encode_entry(dtype, shape, shard, offset, size, crc32c, slices) + extra


def header(num_shards: int = 1, endianness: int = 0, producer: int = 1, min_consumer: int = 0) -> bytes:
    if (producer, min_consumer) == (1, 0):
        return encode_header(num_shards, endianness)
    out = field(1, VARINT, num_shards) if num_shards else b""
    if endianness:
        out += field(2, VARINT, endianness)
    version = field(1, VARINT, producer) + (field(2, VARINT, min_consumer) if min_consumer else b"")
    return out + field(3, LENGTH, version)


def table(items, block_size: int = sstable.BLOCK_SIZE) -> bytes:
    """A well-formed table of ``items`` (key, value) in the order given (repeats allowed)."""
    return sstable.build_table(list(items), block_size)


def tensor_table(entries: dict, num_shards: int = 1, hdr: bytes | None = None, block_size=sstable.BLOCK_SIZE) -> bytes:
    """An index of ``entries`` (name -> entry bytes; bytes keys are used as they are), sorted."""
    items = [(b"", hdr if hdr is not None else header(num_shards))]
    items += sorted(
        (k if isinstance(k, bytes) else k.encode("utf-8", "surrogateescape"), v) for k, v in entries.items()
    )
    return table(items, block_size)


def slice_entries(name: str, dtype: int, full_shape, pieces) -> dict:
    """A partitioned tensor's full entry and its hidden slice entries; ``pieces``: (extents,
    slice entry bytes)."""
    out = {name: entry(dtype, full_shape, slices=[e for e, _ in pieces])}
    for extents, value in pieces:
        out[slice_key(name, extents)] = value
    return out


def raw_block(entries, restarts=(0,)) -> bytes:
    """A block from ``(shared, key suffix, value)`` triples taken as they are (any ``shared``),
    then the restart array; or, for ``entries`` given as bytes, those bytes as the entries."""
    if isinstance(entries, (bytes, bytearray)):
        body = bytes(entries)
    else:
        body = b"".join(varint(s) + varint(len(k)) + varint(len(v)) + k + v for s, k, v in entries)
    return body + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def _with_trailer(contents: bytes, kind: int = sstable.NO_COMPRESSION) -> bytes:
    t = bytes([kind])
    return contents + t + struct.pack("<I", crc.mask(crc.value(contents + t)))


def assemble(blocks, handles=None, index_entries=None, meta: bytes | None = None) -> bytes:
    """A table file from data ``blocks`` (contents, or (contents, compression type)), each with a
    valid trailer. The index block lists ``handles`` ((offset, size) pairs, or raw handle bytes;
    default: every block once, in order) under keys b"k0", b"k1", ...; ``index_entries`` replaces
    the whole index block's entries (raw bytes or triples, see ``raw_block``)."""
    out = bytearray()
    real = []
    for b in blocks:
        contents, kind = b if isinstance(b, tuple) else (b, sstable.NO_COMPRESSION)
        real.append((len(out), len(contents)))
        out += _with_trailer(contents, kind)
    if index_entries is None:
        hs = real if handles is None else handles
        index_entries = [
            (0, b"k%d" % i, h if isinstance(h, bytes) else varint(h[0]) + varint(h[1])) for i, h in enumerate(hs)
        ]
    index_contents = raw_block(index_entries)
    meta_contents = raw_block(b"") if meta is None else meta
    meta_handle = varint(len(out)) + varint(len(meta_contents))
    out += _with_trailer(meta_contents)
    index_handle = varint(len(out)) + varint(len(index_contents))
    out += _with_trailer(index_contents)
    footer = meta_handle + index_handle
    footer += b"\x00" * (40 - len(footer)) + struct.pack("<II", sstable.MAGIC & 0xFFFFFFFF, sstable.MAGIC >> 32)
    return bytes(out + footer)


def block_of(items, interval: int = 16) -> bytes:
    """A well-formed data block of (key, value) items (prefix-compressed like TF's)."""
    b = sstable._BlockBuilder(interval)
    for k, v in items:
        b.add(k, v)
    return b.finish()


def snappy(raw: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(raw))


def string_tensor(values) -> tuple[bytes, int]:
    """DT_STRING data and its masked CRC (TF's layout)."""
    from distrestore.format.strings import encode_strings

    return encode_strings(values)
