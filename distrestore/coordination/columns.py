"""Integer columns made small for a read task's arguments, and made whole again there.

A read order names every entry it checks: row, offset, size, CRC32C, check kind and element
count, 37 bytes as int64 columns. 10^4 small entries in one task made arguments of hundreds of
KB, and Ray sends an argument over 100 KB through the object store (a put by the coordinator,
a fetch on the reading node) rather than inside the task. Most of those columns say little:
rows and offsets follow on from each other, sizes and kinds repeat. So a column travels as its
one value when every element has it, else in the narrowest integer type that holds it, and rows
and offsets travel as their distance from "the next one", zero for contiguous entries.
"""

from __future__ import annotations

import numpy as np

_NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)


def encode(a: np.ndarray) -> tuple:
    """``(dtype, length, value)``: one int for a column of one repeated value, else the array in
    the narrowest integer type that holds every element."""
    if len(a) and (a == a[0]).all():
        return a.dtype.str, len(a), int(a[0])
    return a.dtype.str, len(a), a.astype(_narrowest(a), copy=False)


def decode(col: tuple) -> np.ndarray:
    """The column ``encode`` was given, in its own dtype."""
    dtype, n, value = col
    if isinstance(value, np.ndarray):
        return value.astype(dtype)
    return np.full(n, value, dtype)


def _narrowest(a: np.ndarray):
    if not len(a) or a.dtype.kind not in "iu":
        return a.dtype
    lo, hi = int(a.min()), int(a.max())
    for t in _NARROW:
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max and np.dtype(t).itemsize < a.dtype.itemsize:
            return t
    return a.dtype


def runs_residual(values: np.ndarray, steps: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` cut into runs of ``lengths``, as (each run's first value, the residual): how
    far each value is from its run's first value plus the ``steps`` of the elements before it in
    the run, in ``values``' dtype. Zero everywhere for runs of consecutive rows (steps of 1) or
    of back-to-back entries (steps: their sizes)."""
    firsts = np.zeros(len(lengths), np.int64)
    full = lengths > 0
    firsts[full] = values[_starts(lengths)[full]]
    base = runs_restore(firsts, np.zeros(len(values), np.int64), steps, lengths)
    return firsts, (values - base).astype(values.dtype)


def runs_restore(firsts: np.ndarray, residual: np.ndarray, steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The values ``runs_residual`` took apart, in the residual's dtype."""
    excl = np.cumsum(steps, dtype=np.int64) - steps  # the steps before each element, from the column's start
    full = lengths > 0
    into_run = excl - np.repeat(excl[_starts(lengths)[full]], lengths[full])
    return (residual + np.repeat(firsts, lengths) + into_run).astype(residual.dtype)


def _starts(lengths: np.ndarray) -> np.ndarray:
    return (np.cumsum(lengths, dtype=np.int64) - lengths).astype(np.int64)
