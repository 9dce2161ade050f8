"""CRC32C as TensorFlow uses it: hardware-accelerated checksums, masking and combination.

TF stores *masked* CRC32C values (``tsl/lib/hash/crc32c.h``) so that a CRC of data that embeds CRCs
stays well distributed. ``combine`` lets several threads checksum pieces of one tensor as they read
them (while the bytes are still in cache) and join the pieces afterwards. ``first_mismatch`` checks
thousands of packed small tensors in one call. ``copy_into`` places a response's bytes in their
destinations and checksums them in the same pass.

The facade of the compiled ``distrestore._native._checksum`` (``native``; None where it is not
built or the CPU lacks SSE4.2/PCLMULQDQ, and tests set it to None to run the fallbacks): without it,
``value`` is the ``crc32c`` package and ``combine`` and ``first_mismatch`` are Python, with
identical results.
"""

from __future__ import annotations

from functools import cache

import crc32c as _crc32c

from .._native import checksum as native  # None where not built or not usable on this CPU

_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def value(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (any buffer), continuing from ``crc``. Releases the GIL on big inputs."""
    if native is not None:
        return native.crc32c(data, crc)
    return _crc32c.crc32c(data, crc)


def copy_into(src, buffers, crc: int = 0) -> list[int]:
    """Fill ``buffers`` (writable, in order) from consecutive bytes of ``src``, exactly as many
    as they hold, and return each one's CRC32C (one pass over ``src``, GIL released, where the
    native module is built). The first buffer's CRC32C continues from ``crc``: the CRC of what
    an earlier chunk of a streamed answer put in front of it."""
    if native is not None:
        return native.copy_crc(src, buffers, crc)
    mv = memoryview(src).cast("B")
    total = sum(memoryview(b).nbytes for b in buffers)
    if total != len(mv):
        raise ValueError(f"copy_crc: the buffers hold {total} bytes, the source has {len(mv)}")
    out, pos = [], 0
    for b in buffers:
        dst = memoryview(b).cast("B")
        dst[:] = mv[pos : pos + len(dst)]
        out.append(value(dst, crc if not out else 0))
        pos += len(dst)
    return out


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _gf2_times(matrix: tuple[int, ...], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= matrix[i]
        vec >>= 1
        i += 1
    return out


@cache
def _shift_matrix(log2_bytes: int) -> tuple[int, ...]:
    """The GF(2) operator that appends 2**log2_bytes zero bytes to a CRC register."""
    if log2_bytes == 0:
        one_bit = (_POLY,) + tuple(1 << n for n in range(31))
        m = one_bit
        for _ in range(3):  # 1 bit -> 8 bits
            m = tuple(_gf2_times(m, m[n]) for n in range(32))
        return m
    prev = _shift_matrix(log2_bytes - 1)
    return tuple(_gf2_times(prev, prev[n]) for n in range(32))


def combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of ``a + b`` from ``crc1 = value(a)``, ``crc2 = value(b)`` and ``len(b)`` (zlib's method)."""
    if native is not None:
        return native.combine(crc1, crc2, len2)
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_shift_matrix(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def first_mismatch(buf, offsets, sizes, masked) -> int:
    """Index of the first piece ``buf[offsets[i]:offsets[i] + sizes[i]]`` whose CRC32C differs
    from ``unmask(masked[i])`` (or that lies outside ``buf``), or -1. ``offsets``/``sizes``: int64
    arrays, ``masked``: uint32. One call for thousands of small tensors (in C, GIL released,
    where the native module is built)."""
    if native is not None:
        return native.first_mismatch(buf, offsets, sizes, masked)
    mv = memoryview(buf).cast("B")
    n = len(mv)
    for i, (o, s, m) in enumerate(zip(offsets.tolist(), sizes.tolist(), masked.tolist())):
        if o < 0 or s < 0 or o + s > n or value(mv[o : o + s]) != unmask(m):
            return i
    return -1
