"""Tensor slices: TF's slice specs, the ordered-code keys of slice entries, and box arithmetic.

A slice is a tuple of ``(start, length)`` extents, one per dimension, ``length == -1`` meaning the
whole dimension (TF's ``kFullExtent``). A *box* is the same slice made concrete for a shape:
``((start, stop), ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CorruptCheckpointError
from .overlap import find_overlap

Extents = tuple[tuple[int, int], ...]
Box = tuple[tuple[int, int], ...]


# -- ordered code (tensorflow/core/lib/strings/ordered_code.cc) -------------------------------


def _num_increasing(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return bytes([len(body)]) + body


def _escape(s: bytes) -> bytes:
    out = bytearray()
    for b in s:
        if b == 0x00:
            out += b"\x00\xff"
        elif b == 0xFF:
            out += b"\xff\x00"
        else:
            out.append(b)
    return bytes(out)


_SIGNED_HEADERS = {
    1: (0x80, 0),
    2: (0xC0, 0),
    3: (0xE0, 0),
    4: (0xF0, 0),
    5: (0xF8, 0),
    6: (0xFC, 0),
    7: (0xFE, 0),
    8: (0xFF, 0),
    9: (0xFF, 0x80),
    10: (0xFF, 0xC0),
}


def _signed_num_increasing(v: int) -> bytes:
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    n = 1
    while not x < (1 << (7 * n - 1)) and n < 10:
        n += 1
    raw = bytearray((v & ((1 << (8 * n)) - 1)).to_bytes(n, "big"))
    h0, h1 = _SIGNED_HEADERS[n]
    raw[0] ^= h0
    if n > 1:
        raw[1] ^= h1
    return bytes(raw)


def slice_key(name: str, extents: Extents) -> bytes:
    """``EncodeTensorNameSlice``: the index key of one stored slice of tensor ``name``."""
    out = [
        _num_increasing(0),
        _escape(name.encode("utf-8", "surrogateescape")) + b"\x00\x01",
        _num_increasing(len(extents)),
    ]
    for start, length in extents:
        out.append(_signed_num_increasing(start))
        out.append(_signed_num_increasing(length))
    return b"".join(out)


# -- specs and boxes -----------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[tuple[int, ...], Extents]:
    """Parse ``"10 3 0,4:-"`` (``SaveSliceInfo.spec``) into (full shape, extents)."""
    parts = spec.strip().split(" ")
    try:
        shape = tuple(int(p) for p in parts[:-1])
        extents = []
        for dim in parts[-1].split(":"):
            if dim == "-":
                extents.append((0, -1))
            else:
                s, n = dim.split(",")
                extents.append((int(s), int(n)))
    except ValueError:
        raise ValueError(f"malformed slice spec {spec!r}") from None
    if len(extents) != len(shape):
        raise ValueError(f"slice spec {spec!r} has {len(extents)} extents for rank {len(shape)}")
    return shape, tuple(extents)


def format_spec(shape: Sequence[int], box: Box) -> str:
    dims = ":".join(f"{a},{b - a}" for a, b in box)
    return " ".join(str(d) for d in shape) + " " + dims


def to_box(extents: Extents, shape: Sequence[int]) -> Box:
    if len(extents) != len(shape):
        raise CorruptCheckpointError(f"slice of rank {len(extents)} for a tensor of shape {list(shape)}")
    return tuple((0, d) if n == -1 else (s, s + n) for (s, n), d in zip(extents, shape))


def check_partition(slices: Sequence[Extents], shape: Sequence[int], where: str) -> tuple[Box, ...]:
    """The boxes of a partitioned tensor's stored slices, refused as TF refuses them: of the
    tensor's rank, each extent a start >= 0 and a length >= 0 (or the full extent, -1 from 0)
    inside the shape (TF: "Extent ... out of bounds"), and no two slices overlapping (TF:
    "Overlapping slices"), found by a sweep in O(n log n) where TF compares every pair."""
    boxes = []
    for extents in slices:
        if len(extents) != len(shape):
            raise CorruptCheckpointError(
                f"{where}: slice {list(extents)} has rank {len(extents)}, the tensor {len(shape)} ({list(shape)})"
            )
        for d, ((start, length), dim) in enumerate(zip(extents, shape)):
            full = length == -1 and start == 0
            if not full and not (0 <= start and 0 <= length and start + length <= dim):
                raise CorruptCheckpointError(
                    f"{where}: slice {list(extents)} is out of bounds in dimension {d} of shape {list(shape)}"
                )
        boxes.append(to_box(extents, shape))
    pair = find_overlap(boxes)
    if pair is not None:
        a, b = pair
        raise CorruptCheckpointError(f"{where}: overlapping slices {list(boxes[a])} and {list(boxes[b])}")
    return tuple(boxes)


def box_from_region(region, shape: Sequence[int]) -> Box:
    """A region given as a tuple of ``slice`` objects (step 1) or None (whole tensor)."""
    if region is None:
        return tuple((0, d) for d in shape)
    region = tuple(region)
    if len(region) > len(shape):
        raise ValueError(f"region {region} has more dimensions than shape {list(shape)}")
    region = region + (slice(None),) * (len(shape) - len(region))
    box = []
    for r, d in zip(region, shape):
        if not isinstance(r, slice):
            raise ValueError(f"region entries must be slices, got {r!r}")
        start, stop, step = r.indices(d)
        if step != 1:
            raise ValueError(f"region slices must have step 1, got {r}")
        box.append((start, max(start, stop)))
    return tuple(box)


def box_size(box: Box) -> int:
    n = 1
    for a, b in box:
        n *= b - a
    return n


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


def intersect(a: Box, b: Box) -> Box | None:
    out = []
    for (a0, a1), (b0, b1) in zip(a, b):
        lo, hi = max(a0, b0), min(a1, b1)
        if lo >= hi:
            return None
        out.append((lo, hi))
    return tuple(out)


def relative(inner: Box, outer: Box) -> tuple[slice, ...]:
    """``inner`` as numpy slices into an array holding ``outer``."""
    return tuple(slice(i0 - o0, i1 - o0) for (i0, i1), (o0, _) in zip(inner, outer))
