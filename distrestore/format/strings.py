"""Variable-length tensors in data files: DT_STRING (with its two checksums) and DT_VARIANT.

DT_STRING layout (``WriteStringTensor``): N varint64 lengths, a masked CRC of the lengths (each as
little-endian uint32, or uint64 above 4 GiB), then the bytes. The entry CRC continues the same
running CRC over the 4 stored checksum bytes and then the string bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import ChecksumMismatchError, CorruptCheckpointError
from . import crc
from .wire import encode_varint, read_varint


def _length_bytes(n: int) -> bytes:
    return struct.pack("<I", n) if n <= 0xFFFFFFFF else struct.pack("<Q", n)


def decode_strings(buf, count: int, shape, *, stored_crc: int | None, where: str) -> np.ndarray:
    """Decode ``count`` strings; verify both checksums when ``stored_crc`` (masked) is given."""
    buf = bytes(buf)
    lengths = []
    pos = 0
    try:
        for _ in range(count):
            n, pos = read_varint(buf, pos)
            lengths.append(n)
        (len_crc,) = struct.unpack_from("<I", buf, pos)
    except (IndexError, struct.error, CorruptCheckpointError):
        raise CorruptCheckpointError(f"{where}: string tensor header is truncated") from None
    header_end = pos + 4
    total = sum(lengths)
    if stored_crc is not None:  # before the sizes, as TF: a corrupt length is a checksum error
        running = crc.value(b"".join(_length_bytes(n) for n in lengths))
        if crc.mask(running) != len_crc:
            raise ChecksumMismatchError(f"{where}: string lengths checksum mismatch")
    if header_end + total != len(buf):
        raise CorruptCheckpointError(f"{where}: string tensor holds {len(buf)} bytes, lengths say {header_end + total}")
    if stored_crc is not None:
        running = crc.value(buf[pos:], running)  # the stored length checksum, then the bytes
        if crc.mask(running) != stored_crc:
            raise ChecksumMismatchError(f"{where}: checksum mismatch in string data")
    out = np.empty(count, dtype=object)
    p = header_end
    for i, n in enumerate(lengths):
        out[i] = buf[p : p + n]
        p += n
    return out.reshape(shape)


def encode_strings(values) -> tuple[bytes, int]:
    """Serialize an iterable of bytes in C order; return (bytes, masked entry CRC)."""
    items = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    running = crc.value(b"".join(_length_bytes(len(v)) for v in items))
    len_crc = struct.pack("<I", crc.mask(running))
    body = b"".join(items)
    running = crc.value(len_crc + body, running)
    return b"".join(encode_varint(len(v)) for v in items) + len_crc + body, crc.mask(running)


def decode_variants(buf, count: int, shape, *, stored_crc: int | None, where: str) -> np.ndarray:
    """DT_VARIANT elements as raw serialized ``VariantTensorDataProto`` bytes (object array)."""
    buf = bytes(buf)
    out = np.empty(count, dtype=object)
    running = 0
    pos = 0
    try:
        for i in range(count):
            n, pos = read_varint(buf, pos)
            proto = buf[pos : pos + n]
            if len(proto) != n:
                raise IndexError
            pos += n
            running = crc.value(struct.pack("<Q", n) + proto, running)
            (elem_crc,) = struct.unpack_from("<I", buf, pos)
            if stored_crc is not None and elem_crc != crc.mask(running):
                raise ChecksumMismatchError(f"{where}: checksum mismatch in variant element {i}")
            running = crc.value(buf[pos : pos + 4], running)
            pos += 4
            out[i] = proto
    except (IndexError, struct.error):
        raise CorruptCheckpointError(f"{where}: variant tensor data is truncated") from None
    if stored_crc is not None and crc.mask(running) != stored_crc:
        raise ChecksumMismatchError(f"{where}: checksum mismatch in variant tensor")
    return out.reshape(shape)
