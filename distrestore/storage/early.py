"""Reads begun before the plan that wants them: the head of a remote data file, asked for while
its index is.

A remote restore otherwise waits two round trips before its first data byte arrives: the index
GET, then the GETs the plan makes from it. A restore of a whole checkpoint reads all of its data
file, so ``restore.py`` asks for the first :data:`HEAD_BYTES` of the usual single data file (its
name follows from the prefix alone) together with the index, in GETs of :data:`HEAD_CELL` bytes
each: one long answer would come at one connection's speed, and an object store's connections
are each much slower than many together. The answers are kept as the HTTP client hands out their
chunks (no copy). A planned read that starts inside the head takes its bytes from there
(:meth:`EarlyRead.serve`), in the one copy into place, with its CRC32C, that a streamed read
makes, and asks for what it needs past them as usual, into the same sink. So any plan is served
right, however its ranges fall, and a chunk is dropped once its bytes are in place.

The answers are trusted no more than any read: every byte is checked against the index's
CRC32Cs. The first GET starts at byte 0, so whatever arrived of it holds the file's first bytes,
even when the answer is short (the file ends sooner; a store that ignores the Range header sends
the whole file) or cut off: reads take its bytes as they arrive. A later one is used only once
it has ended well, with no more bytes than asked for. Past what is usable, a read asks for its
bytes itself and reports its own error: after a GET failed, or when the read's time is up. The
caller discards the head once its reads are done (:meth:`EarlyRead.discard`): GETs still
running are cancelled and what no read took is dropped.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import threading
import time
from collections.abc import Callable

HEAD_CELL = 8 << 20
"""Bytes per early GET: the request size the planner uses for object stores."""

HEAD_BYTES = 64 << 20
"""Bytes of the data file asked for early. What it saves is about the time the restore takes to
move that many bytes, up to one round trip plus the index's own time (``benchmarks/RESULTS.md``).
A file shorter than that gets GETs past its end, which fail and are ignored."""


class Chunks:
    """A sink that keeps an answer's chunks as they come (``Sink``'s ``write``, no copy), for
    readers in other threads (:meth:`EarlyRead.serve`). ``base``: the answer's first byte in
    the file."""

    def __init__(self, base: int, expected: int):
        self.base = base
        self.expected = expected
        self.received = 0
        self.chunks: list = []  # None once every byte of it was taken
        self.offsets: list[int] = []  # where each chunk starts in the answer
        self.left: list[int] = []  # bytes of each chunk not taken yet
        self.done = False  # the GET ended
        self.ok = False  # ... whole and without an error
        self.changed = threading.Condition()

    def write(self, chunk) -> None:
        n = memoryview(chunk).nbytes
        if self.received + n > self.expected:
            raise ValueError(f"the answer holds more than the {self.expected} bytes asked for")
        with self.changed:
            self.chunks.append(chunk)
            self.offsets.append(self.received)
            self.left.append(n)
            self.received += n
            self.changed.notify_all()

    def end(self, future: concurrent.futures.Future) -> None:
        with self.changed:
            self.done = True
            self.ok = not future.cancelled() and future.exception() is None
            self.changed.notify_all()

    def drop(self) -> None:
        with self.changed:
            self.chunks = [None] * len(self.chunks)
            self.done = True
            self.changed.notify_all()

    def take(self, pos: int, end: int, sink, until: float | None) -> int:
        """Write bytes [pos, end) of the file this answer holds into ``sink`` (from byte 0 as
        they arrive, else once the answer ended well), waiting until the monotonic time
        ``until`` at most; returns where that stopped."""
        stop = min(end, self.base + self.expected)
        while pos < stop:
            with self.changed:
                # the first answer is usable as it arrives; a later one once it ended well
                while not self.done and (self.base > 0 or self.base + self.received <= pos):
                    wait = None if until is None else until - time.monotonic()
                    if wait is not None and wait <= 0:
                        return pos
                    self.changed.wait(wait)
                if (self.base > 0 and not self.ok) or self.base + self.received <= pos:
                    return pos
                avail = min(stop, self.base + self.received)
                chunks, offsets = self.chunks, self.offsets
                first = i = bisect.bisect_right(offsets, pos - self.base) - 1
            taken = []
            while pos < avail and chunks[i] is not None:  # None: taken already, or discarded
                view = memoryview(chunks[i]).cast("B")
                a = pos - self.base - offsets[i]
                b = min(len(view), avail - self.base - offsets[i])
                sink.write(view[a:b])
                taken.append(b - a)
                pos += b - a
                i += 1
            with self.changed:  # a byte is read once: a chunk is dropped once all of it was taken
                for j, n in enumerate(taken, first):
                    self.left[j] -= n
                    if self.left[j] <= 0:
                        self.chunks[j] = None
            if pos < avail:
                return pos
        return pos


class EarlyRead:
    """GETs of bytes [0, ``nbytes``) of ``url`` (default :data:`HEAD_BYTES`), ``cell`` bytes
    each, begun now: ``begin(start, end, chunks)`` sends one, writing its answer into ``chunks``,
    and returns its future."""

    def __init__(
        self,
        url: str,
        begin: Callable[[int, int, Chunks], concurrent.futures.Future],
        nbytes: int | None = None,
        cell: int | None = None,
    ):
        self.url = url
        nbytes = HEAD_BYTES if nbytes is None else nbytes
        cell = HEAD_CELL if cell is None else cell
        self._cells = [Chunks(a, min(nbytes, a + cell) - a) for a in range(0, nbytes, cell)]
        self._futures = []
        for c in self._cells:
            future = begin(c.base, c.base + c.expected, c)
            future.add_done_callback(c.end)
            self._futures.append(future)

    def serve(self, start: int, end: int, sink, limit: float | None) -> int:
        """Write what the answers hold of bytes [start, end), from ``start`` on, into ``sink``,
        waiting for bytes on their way at most ``limit`` seconds; returns where that stopped
        (``start`` when they hold none of them)."""
        until = None if limit is None else time.monotonic() + limit
        pos = start
        for cell in self._cells:
            if pos >= end:
                break
            if cell.base <= pos < cell.base + cell.expected:
                got = cell.take(pos, end, sink, until)
                if got < min(end, cell.base + cell.expected):
                    return got
                pos = got
        return pos

    def discard(self) -> None:
        """Cancel the GETs still running and drop what no read took."""
        for future in self._futures:
            future.cancel()
        for cell in self._cells:
            cell.drop()
