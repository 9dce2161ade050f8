"""Protocol-buffer wire format, by hand: varints and field iteration for the few messages we read.

A hand-written decoder keeps protobuf out of the core dependencies and lets the hot path (one
``BundleEntryProto`` per tensor, hundreds of thousands per index) stay tight.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import CorruptCheckpointError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def read_varint(buf, pos: int) -> tuple[int, int]:
    """Decode a LEB128 varint at ``pos``; return (value, next position). At most 10 bytes, and the
    value must fit 64 bits (the 10th byte holds only bit 63), as in the C decoder: a longer one
    is a CorruptCheckpointError. An ``IndexError`` when ``pos`` is past the end."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        try:
            b = buf[pos]
        except IndexError:
            raise CorruptCheckpointError("truncated varint") from None
        if shift == 63 and b > 1:
            raise CorruptCheckpointError("varint longer than 64 bits")
        result |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # proto int32/int64 negatives are 10-byte two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def to_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def field_spans(buf, pos: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """The fields of the message in ``buf[pos:end]`` as ``(number, wire, a, b)``: a length-
    delimited value is ``buf[a:b]``; a varint's or fixed-width field's value is ``a``.
    Offsets, not copies: an object graph has hundreds of thousands of small messages."""
    end = len(buf) if end is None else end
    out = []
    try:
        while pos < end:
            tag = buf[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = read_varint(buf, pos)
            wire = tag & 7
            if wire == LENGTH:
                n = buf[pos]
                if n < 0x80:
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos)
                if pos + n > end:
                    raise CorruptCheckpointError("length-delimited field runs past the message")
                out.append((tag >> 3, LENGTH, pos, pos + n))
                pos += n
            elif wire == VARINT:
                v = buf[pos]
                if v < 0x80:
                    pos += 1
                else:
                    v, pos = read_varint(buf, pos)
                out.append((tag >> 3, VARINT, v, 0))
            elif wire == FIXED32:
                out.append((tag >> 3, FIXED32, struct.unpack_from("<I", buf, pos)[0], 0))
                pos += 4
            elif wire == FIXED64:
                out.append((tag >> 3, FIXED64, struct.unpack_from("<Q", buf, pos)[0], 0))
                pos += 8
            else:
                raise CorruptCheckpointError(f"unsupported protobuf wire type {wire}")
    except (IndexError, struct.error):
        raise CorruptCheckpointError("truncated protobuf message") from None
    if pos > end:
        raise CorruptCheckpointError("truncated protobuf message")
    return out


def iter_fields(buf) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value); length-delimited values are ``bytes``."""
    for number, wire, a, b in field_spans(buf):
        yield number, wire, (bytes(buf[a:b]) if wire == LENGTH else a)


def field(number: int, wire: int, value) -> bytes:
    """Encode one field (value: int for varint/fixed, bytes for length-delimited)."""
    tag = encode_varint((number << 3) | wire)
    if wire == VARINT:
        return tag + encode_varint(value)
    if wire == LENGTH:
        return tag + encode_varint(len(value)) + bytes(value)
    if wire == FIXED32:
        return tag + struct.pack("<I", value)
    return tag + struct.pack("<Q", value)
