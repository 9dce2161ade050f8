"""Byte ranges of many data files as numpy intervals on one axis.

A byte of a service's data file ``f`` at ``offset`` has the *position* ``f << 41 | offset``, so
the ranges of every file of every checkpoint a coordinator serves are plain ``[start, end)``
int64 intervals, and union, difference and overlap of 10^6 of them are a few numpy calls. Files
must be smaller than 2 TiB (``MAX_FILE_BYTES``); no range ever spans two files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..readplan import SKIP, ReadPlan

FILE_SHIFT = 41
MAX_FILE_BYTES = 1 << FILE_SHIFT
_OFFSET_MASK = MAX_FILE_BYTES - 1


class Ranges(NamedTuple):
    """Intervals ``[start[i], end[i])`` of positions (int64 arrays of one length)."""

    start: np.ndarray
    end: np.ndarray

    @classmethod
    def empty(cls) -> Ranges:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))

    @classmethod
    def concat(cls, parts) -> Ranges:
        """The intervals of every ``Ranges`` in ``parts``, one after the other (not merged)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.start for p in parts]), np.concatenate([p.end for p in parts]))

    @classmethod
    def of(cls, starts, ends) -> Ranges:
        return cls(np.asarray(starts, np.int64).reshape(-1), np.asarray(ends, np.int64).reshape(-1))

    def __len__(self) -> int:
        return len(self.start)

    @property
    def nbytes(self) -> int:
        return int((self.end - self.start).sum())


def position(file: int | np.ndarray, offset: int | np.ndarray):
    """The position of byte ``offset`` of file ``file`` (scalars or arrays)."""
    return (np.asarray(file, np.int64) << FILE_SHIFT) | np.asarray(offset, np.int64)


def file_of(pos):
    return np.asarray(pos, np.int64) >> FILE_SHIFT


def offset_of(pos):
    return np.asarray(pos, np.int64) & _OFFSET_MASK


def merge(r: Ranges) -> Ranges:
    """The union of ``r``: sorted, disjoint, touching intervals joined, empty ones dropped."""
    keep = r.end > r.start
    start, end = r.start[keep], r.end[keep]
    if len(start) <= 1:
        return Ranges(start.copy(), end.copy())
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    new = np.ones(len(start), bool)
    new[1:] = start[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(start)) - 1
    return Ranges(start[first], reach[last])


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values (by sorting: numpy's hash-based ``unique`` was 10 x slower here)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    return values[np.append(True, values[1:] != values[:-1])]


def contains(r: Ranges, points: np.ndarray) -> np.ndarray:
    """For each point, whether it lies in ``r`` (``r`` merged)."""
    i = np.searchsorted(r.start, points, side="right") - 1
    ok = i >= 0
    out = np.zeros(len(points), bool)
    out[ok] = points[ok] < r.end[i[ok]]
    return out


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """``a`` minus ``b`` (both merged), merged."""
    if not len(a) or not len(b):
        return Ranges(a.start.copy(), a.end.copy())
    if len(a) == 1 and b.start[0] <= a.start[0] and b.end[-1] >= a.end[0] and (b.start[1:] == b.end[:-1]).all():
        return Ranges.empty()  # covered by touching intervals (a registration of cached bytes)
    bounds = unique(np.concatenate([a.start, a.end, b.start, b.end]))
    lo, hi = bounds[:-1], bounds[1:]
    keep = contains(a, lo) & ~contains(b, lo)
    return merge(Ranges(lo[keep], hi[keep]))


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """``a`` and ``b`` (both merged), merged."""
    if not len(a) or not len(b):
        return Ranges.empty()
    bounds = unique(np.concatenate([a.start, a.end, b.start, b.end]))
    lo, hi = bounds[:-1], bounds[1:]
    keep = contains(a, lo) & contains(b, lo)
    return merge(Ranges(lo[keep], hi[keep]))


def overlapping(starts: np.ndarray, ends: np.ndarray, r: Ranges) -> np.ndarray:
    """Indices of the sorted, disjoint intervals ``[starts[i], ends[i])`` that overlap any
    interval of ``r``, ascending and unique."""
    if not len(starts) or not len(r):
        return np.empty(0, np.int64)
    if len(r) == 1:  # the common case of one small registration: no set arithmetic
        lo = int(np.searchsorted(ends, r.start[0], side="right"))
        hi = int(np.searchsorted(starts, r.end[0], side="left"))
        return np.arange(lo, max(lo, hi), dtype=np.int64)
    lo = np.searchsorted(ends, r.start, side="right")
    hi = np.searchsorted(starts, r.end, side="left")
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    if total == 0:
        return np.empty(0, np.int64)
    first = np.repeat(lo, n)
    within = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    return unique(first + within)


def needed_ranges(plan: ReadPlan, file_ids: Mapping[str, int]) -> Ranges:
    """Positions of every byte the plan needs (its non-SKIP segments), merged; ``file_ids``
    maps the plan's data file paths to service file ids."""
    starts: list[int] = []
    ends: list[int] = []
    for req in plan.requests:
        base = int(file_ids[req.file]) << FILE_SHIFT
        pos = base + req.start
        run = None
        for seg in req.segments:
            if seg.kind != SKIP:
                if run is None:
                    run = pos
            elif run is not None:
                starts.append(run)
                ends.append(pos)
                run = None
            pos += seg.length
        if run is not None:
            starts.append(run)
            ends.append(pos)
    return merge(Ranges.of(starts, ends))
