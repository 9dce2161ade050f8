"""Do any two of n boxes share a point? A sweep, not the n^2 pairs TF's TensorSliceSet tries.

A partitioned tensor's stored slices must not overlap. TF partitions one dimension, but the
format allows slicing any. The sweep here is exact for boxes of any rank:

- Empty boxes share no point, and a dimension in which every box has the same interval separates
  none of them: both are set aside. Of the dimensions left, the one with the most distinct
  intervals is swept, the next one keyed.
- One dimension left: sorted by start, some pair overlaps iff some neighbours do (the earliest
  interval that a later one overlaps also overlaps its own successor). O(n log n).
- Two or more: boxes enter in order of their start in the swept dimension; those still open there
  (kept in a heap by end) overlap the new one in that dimension. Open boxes never overlap each
  other (the sweep would have stopped), so with exactly two dimensions their keyed intervals are
  disjoint and sorted, and the new box's can only meet its predecessor or its successor:
  O(n log n) (plus list moves at memmove speed). With more, the open boxes whose keyed interval
  could meet the new one's are found by bisection (their start lies within the longest keyed
  interval before the new one's end) and each is compared in full: O(n log n + candidates). For
  boxes of roughly equal extent, as a grid of slices has, candidates stay few per box.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Sequence


def find_overlap(boxes: Sequence[tuple[tuple[int, int], ...]]) -> tuple[int, int] | None:
    """Indices ``(i, j)`` of two boxes (half-open ``(start, stop)`` per dimension) that share a
    point, or None. Boxes of different rank are a caller's error."""
    live = [i for i, b in enumerate(boxes) if all(lo < hi for lo, hi in b)]
    if len(live) < 2:
        return None
    rank = len(boxes[live[0]])
    distinct = {d: len({boxes[i][d] for i in live}) for d in range(rank)}
    dims = sorted((d for d in range(rank) if distinct[d] > 1), key=lambda d: -distinct[d])
    if not dims:  # all the same box
        return live[0], live[1]
    if len(dims) == 1:
        return _neighbours(boxes, live, dims[0])
    return _sweep(boxes, live, dims)


def _neighbours(boxes, live, d):
    order = sorted(live, key=lambda i: boxes[i][d])
    for a, b in zip(order, order[1:]):
        if boxes[b][d][0] < boxes[a][d][1]:
            return a, b
    return None


def _meet(a, b, dims) -> bool:
    return all(a[d][0] < b[d][1] and b[d][0] < a[d][1] for d in dims)


def _sweep(boxes, live, dims):
    d0, d1, rest = dims[0], dims[1], dims[2:]
    longest1 = max(boxes[i][d1][1] - boxes[i][d1][0] for i in live)
    open_ends: list[tuple[int, int]] = []  # heap of (end in d0, box)
    keyed: list[tuple[int, int, int]] = []  # open boxes as (start in d1, end in d1, box), sorted
    for i in sorted(live, key=lambda i: boxes[i][d0][0]):
        start0 = boxes[i][d0][0]
        while open_ends and open_ends[0][0] <= start0:
            _, j = heapq.heappop(open_ends)
            del keyed[bisect_left(keyed, (boxes[j][d1][0], boxes[j][d1][1], j))]
        s1, e1 = boxes[i][d1]
        if not rest:
            at = bisect_left(keyed, (s1,))  # first open box starting at or after s1
            if at > 0 and keyed[at - 1][1] > s1:
                return keyed[at - 1][2], i
            if at < len(keyed) and keyed[at][0] < e1:
                return keyed[at][2], i
        else:
            lo = bisect_left(keyed, (s1 - longest1 + 1,))
            hi = bisect_left(keyed, (e1,))
            for _, end1, j in keyed[lo:hi]:
                if end1 > s1 and _meet(boxes[i], boxes[j], rest):
                    return j, i
        insort(keyed, (s1, e1, i))
        heapq.heappush(open_ends, (boxes[i][d0][1], i))
    return None
