"""A worker's side of the service, without Ray: serve a plan's reads from delivered bytes.

The coordinator hands a worker objects, each holding bytes ``[start, end)`` (positions) of some
data file, and they arrive one by one. :class:`Placer` runs the worker's own ``ReadPlan``
against them like an executor runs it against storage: as soon as the objects that arrived
cover a request, its segments are copied into the buffers the read sink
(``distrestore.execute.sink.ReadSink``, an ``Assembly``) hands out. So strings, partitioned variables, new
partitionings and packed small tensors are assembled exactly as in a restore from storage, and
copying overlaps with the reads still under way.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import numpy as np

from ..errors import StorageError
from ..execute.sink import ReadSink
from ..readplan import SKIP, ReadPlan
from .ranges import FILE_SHIFT

_NUMPY_COPY_BYTES = 1 << 16


class Placer:
    """Fills ``plan``'s requests into ``sink`` from objects given to :meth:`add`; the sink
    checks nothing (the service did)."""

    def __init__(self, plan: ReadPlan, sink: ReadSink, file_ids: Mapping[str, int], progress=None):
        self.sink = sink
        self.progress = progress
        self.requests = sorted(plan.requests, key=lambda r: (int(file_ids[r.file]) << FILE_SHIFT) + r.start)
        self.req_start = [(int(file_ids[r.file]) << FILE_SHIFT) + r.start for r in self.requests]
        self.req_end = [s + r.nbytes for s, r in zip(self.req_start, self.requests)]
        self.placed = [False] * len(self.requests)
        self.left = len(self.requests)
        self.starts: list[int] = []  # objects, sorted by start
        self.ends: list[int] = []
        self.buffers: list[np.ndarray] = []
        self.completed: list[int] = list(sink.ready)  # outputs completed so far

    @property
    def nbytes(self) -> int:
        """Bytes of every object added."""
        return sum(len(b) for b in self.buffers)

    def add(self, start: int, end: int, buffer) -> None:
        """An object holding bytes ``[start, end)``; place every request it completes."""
        buf = np.frombuffer(buffer, np.uint8)
        if len(buf) != end - start:
            raise StorageError(f"a delivered object holds {len(buf)} bytes for a range of {end - start}")
        i = bisect.bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.buffers.insert(i, buf)
        first = bisect.bisect_right(self.req_end, start)  # requests overlapping the new object
        last = bisect.bisect_left(self.req_start, end)
        for k in range(first, last):
            if not self.placed[k] and self._covers(self.req_start[k], self.req_end[k]):
                self._place(k)

    def finished(self) -> bool:
        return self.left == 0

    def missing(self) -> str:
        k = self.placed.index(False)
        r = self.requests[k]
        return f"{r.file} bytes [{r.start}, {r.end})"

    def _covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.ends, start)
        pos = start
        while pos < end:
            if i >= len(self.starts) or self.starts[i] > pos:
                return False
            pos = self.ends[i]
            i += 1
        return True

    def _copy(self, dest, start: int, end: int) -> None:
        out = np.frombuffer(dest, np.uint8)
        i = bisect.bisect_right(self.ends, start)
        pos = start
        while pos < end:
            s = self.starts[i]
            n = min(end, self.ends[i]) - pos
            src = self.buffers[i][pos - s : pos - s + n]
            dst = out[pos - start : pos - start + n]
            if n >= _NUMPY_COPY_BYTES:
                np.copyto(dst, src)  # releases the GIL
            else:
                dst[:] = src
            pos += n
            i += 1

    def _place(self, k: int) -> None:
        req = self.requests[k]
        pos = self.req_start[k]
        for seg, view in zip(req.segments, self.sink.buffers(req)):
            if seg.kind != SKIP:
                self._copy(view, pos, pos + seg.length)
            pos += seg.length
        done = self.sink.complete(req, [None] * len(req.segments))
        self.placed[k] = True
        self.left -= 1
        self.completed.extend(done)
        if self.progress is not None:
            self.progress.advance(req.nbytes, len(done))
