"""The bundle's protobuf messages: ``BundleHeaderProto`` and ``BundleEntryProto`` (with shapes and
slices), decoded by hand and encoded byte-for-byte as TF's proto3 serializer does.

``decode_entry`` is the hot path of index parsing (one call per tensor), so it special-cases the
one-byte tags and varints TF writes for ordinary entries and caches decoded shapes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..errors import CorruptCheckpointError
from . import dtypes
from .slices import Extents
from .wire import FIXED32, LENGTH, VARINT, field, iter_fields, read_varint, to_signed64

LITTLE, BIG = 0, 1
INT32_MAX = 2**31 - 1


class BundleHeader(NamedTuple):
    num_shards: int
    endianness: int
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


class TensorEntry(NamedTuple):
    """One tensor's index entry. For a partitioned tensor ``slices`` lists the stored slices and
    the location fields are meaningless; each slice lives in its own (hidden) entry."""

    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    slices: tuple[Extents, ...] = ()

    @property
    def partitioned(self) -> bool:
        return bool(self.slices)

    @property
    def num_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# -- decoding ------------------------------------------------------------------------------


def decode_header(buf: bytes, path: str) -> BundleHeader:
    """The header; ``num_shards`` is an int32 in the proto: past 2^31 - 1 (or negative, as TF
    would read it) it is refused rather than wrapped as TF does."""
    num_shards = endianness = producer = min_consumer = 0
    bad: list[int] = []
    for num, wire, val in iter_fields(buf):
        if num == 1 and wire == VARINT:
            num_shards = val
        elif num == 2 and wire == VARINT:
            endianness = val
        elif num == 3 and wire == LENGTH:
            for vnum, vwire, vval in iter_fields(val):
                if vnum == 1 and vwire == VARINT:
                    producer = to_signed64(vval)
                elif vnum == 2 and vwire == VARINT:
                    min_consumer = to_signed64(vval)
                elif vnum == 3 and vwire == VARINT:
                    bad.append(to_signed64(vval))
                elif vnum == 3 and vwire == LENGTH:  # packed
                    p = 0
                    while p < len(vval):
                        x, p = read_varint(vval, p)
                        bad.append(to_signed64(x))
    if num_shards > INT32_MAX:
        raise CorruptCheckpointError(f"{path}: the header's num_shards {to_signed64(num_shards)} is out of range")
    return BundleHeader(num_shards, endianness, producer, min_consumer, tuple(bad))


def _decode_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for num, wire, val in iter_fields(buf):
        if num == 2 and wire == LENGTH:
            size = 0
            for dnum, dwire, dval in iter_fields(val):
                if dnum == 1 and dwire == VARINT:
                    size = to_signed64(dval)
            dims.append(size)
        elif num == 3 and wire == VARINT and val:
            raise CorruptCheckpointError("tensor shape of unknown rank in a checkpoint entry")
    return tuple(dims)


def _decode_slice(buf: bytes) -> Extents:
    extents = []
    for num, wire, val in iter_fields(buf):
        if num == 1 and wire == LENGTH:
            start, length = 0, -1  # a missing length means the full extent
            for enum_, ewire, eval_ in iter_fields(val):
                if enum_ == 1 and ewire == VARINT:
                    start = to_signed64(eval_)
                elif enum_ == 2 and ewire == VARINT:
                    length = to_signed64(eval_)
            extents.append((start, length))
    return tuple(extents)


_shape_cache: dict[bytes, tuple[int, ...]] = {}
_SHAPE_CACHE_MAX = 4096  # distinct encoded shapes kept: a module cache stays bounded whatever the input
_unpack_u32 = struct.Struct("<I").unpack_from


def decode_entry(name: str, buf: bytes) -> TensorEntry:
    dtype = shard = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    slices = []
    pos, end = 0, len(buf)
    try:
        while pos < end:
            tag = buf[pos]
            pos += 1
            if tag == 0x35:  # crc32c, fixed32
                (crc,) = _unpack_u32(buf, pos)
                pos += 4
                continue
            if tag == 0x12 or tag == 0x3A:  # shape / slices
                n = buf[pos]
                pos += 1
                if n >= 0x80:
                    n, pos = read_varint(buf, pos - 1)
                sub = buf[pos : pos + n]
                pos += n
                if tag == 0x12:
                    shape = _shape_cache.get(sub)
                    if shape is None:
                        shape = _decode_shape(sub)
                        if len(_shape_cache) < _SHAPE_CACHE_MAX:
                            _shape_cache[sub] = shape
                else:
                    slices.append(_decode_slice(sub))
                continue
            if tag in (0x08, 0x18, 0x20, 0x28):
                v = buf[pos]
                pos += 1
                if v >= 0x80:
                    v, pos = read_varint(buf, pos - 1)
                if tag == 0x08:
                    dtype = v
                elif tag == 0x18:
                    shard = v
                elif tag == 0x20:
                    offset = v
                else:
                    size = v
                continue
            # anything else (unknown or multi-byte tags): generic skip
            pos -= 1
            tagv, pos = read_varint(buf, pos)
            wire = tagv & 7
            if wire == VARINT:
                _, pos = read_varint(buf, pos)
            elif wire == LENGTH:
                n, pos = read_varint(buf, pos)
                pos += n
            elif wire == FIXED32:
                pos += 4
            elif wire == 1:
                pos += 8
            else:
                raise CorruptCheckpointError(f"bad wire type {wire}")
    except (IndexError, struct.error, CorruptCheckpointError) as e:
        raise CorruptCheckpointError(f"malformed index entry for tensor {name!r}: {e}") from None
    if pos != end:
        raise CorruptCheckpointError(f"malformed index entry for tensor {name!r}: runs past its end")
    return TensorEntry(
        name, dtypes.from_enum(dtype, what=f"tensor {name!r}"), shape, shard, offset, size, crc, tuple(slices)
    )


# -- encoding ------------------------------------------------------------------------------


def encode_header(num_shards: int, endianness: int = LITTLE) -> bytes:
    out = b""
    if num_shards:
        out += field(1, VARINT, num_shards)
    if endianness:
        out += field(2, VARINT, endianness)
    return out + field(3, LENGTH, field(1, VARINT, 1))  # VersionDef{producer: 1}


def encode_shape(shape) -> bytes:
    return b"".join(field(2, LENGTH, field(1, VARINT, d) if d else b"") for d in shape)


def encode_slice(extents: Extents) -> bytes:
    out = b""
    for start, length in extents:
        ext = b""
        if start:
            ext += field(1, VARINT, start)
        if length != -1:
            ext += field(2, VARINT, length)  # oneof: presence tracked, so 0 is written too
        out += field(1, LENGTH, ext)
    return out


def encode_entry(
    dtype_enum: int, shape, shard_id: int = 0, offset: int = 0, size: int = 0, crc32c: int = 0, slices=()
) -> bytes:
    out = field(1, VARINT, dtype_enum) + field(2, LENGTH, encode_shape(shape))
    if shard_id:
        out += field(3, VARINT, shard_id)
    if offset:
        out += field(4, VARINT, offset)
    if size:
        out += field(5, VARINT, size)
    if crc32c:
        out += field(6, FIXED32, crc32c)
    for s in slices:
        out += field(7, LENGTH, encode_slice(s))
    return out
