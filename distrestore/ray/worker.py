"""The read actors' side of the Ray executor: what an actor keeps between tasks and how it reads.

A :class:`ReadTask` is a small descriptor (requests, the ``Storage`` of each, which segments to
checksum); the actor reads storage itself, computes the CRC32C of every verified segment while
the bytes are hot, and either ``pwrite``s the needed bytes into the driver's shared-memory arena
(same node) or returns them (:class:`ReadResult`) through the object store. Local ranges of
1 MiB or more are mapped (``mmap`` + ``MAP_POPULATE``) rather than read into a buffer first.
Why actors and what each route costs: ``docs/ray-executor.md``.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import NamedTuple

import numpy as np
import ray

from ..errors import StorageError
from ..format import crc
from ..readplan import SKIP, ReadRequest
from ..storage import Storage, local_path
from .shm import write_all

MAP_MIN_BYTES = 1 << 20  # smaller local reads use preadv into a reused buffer: a mapping costs more
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the whole range in at once (Linux)


class ReadTask(NamedTuple):
    """What one actor call reads: requests (local paths made absolute), the storage of each, and
    per segment whether to checksum it."""

    storages: tuple[Storage, ...]
    requests: tuple[ReadRequest, ...]
    storage_ids: tuple[int, ...]
    checks: tuple[tuple[bool, ...], ...]
    threads: int
    map_local: bool
    arena: str | None = None  # shared-memory arena the actor has open: write there, ship nothing
    dests: tuple[tuple[int, ...], ...] | None = None  # per request, per segment: offset in the arena


class ReadResult(NamedTuple):
    parts: list | None  # per request: its needed (non-SKIP) bytes as a list of arrays, runs of
    # whole segments; None when they were written into the arena
    crcs: list  # per request, per segment: CRC32C or None
    node_id: str
    seconds: float
    arena_lost: bool = False  # the task's arena is not open here (the actor was restarted): not run


class _WorkerState:
    """What an actor keeps between tasks: filesystems (one per distinct ``Storage``, so
    object-store sessions outlive a task), a thread pool, per-thread read buffers, and the
    shared-memory arenas of the runs under way."""

    _MAX_STORAGES = 16

    def __init__(self):
        self.lock = threading.Lock()
        self.storages: list[Storage] = []
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0
        self.local = threading.local()
        self.arenas: dict[str, list] = {}  # path -> [fd, tasks using it, closing]

    def open_arena(self, path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False
        with self.lock:
            self.arenas[path] = [fd, 0, False]
        return True

    def use_arena(self, path: str) -> int | None:
        """The arena's descriptor for one more task; None where it is not open here."""
        with self.lock:
            a = self.arenas.get(path)
            if a is None or a[2]:
                return None
            a[1] += 1
            return a[0]

    def done_arena(self, path: str, close: bool = False) -> None:
        """A task is done with the arena, or (``close``) the run is; the last one closes it (a
        descriptor closed under a running ``pwrite`` could be reused for another file)."""
        with self.lock:
            a = self.arenas.get(path)
            if a is None:
                return
            if close:
                a[2] = True
            else:
                a[1] -= 1
            if a[2] and a[1] == 0:
                del self.arenas[path]
                os.close(a[0])

    def storage(self, st: Storage) -> Storage:
        with self.lock:
            for i, s in enumerate(self.storages):
                if s == st:
                    if i:
                        self.storages.insert(0, self.storages.pop(i))
                    return s
            self.storages.insert(0, st)
            del self.storages[self._MAX_STORAGES :]
            return st

    def executor(self, threads: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.pool_size < threads:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(threads, thread_name_prefix="distrestore-ray-read")
                self.pool_size = threads
            return self.pool

    def buffer(self, n: int) -> np.ndarray:
        """A reusable buffer of this thread. Safe to reuse: Ray copies a call's return value
        into the object store in the calling thread, before that thread takes the next call."""
        buf = getattr(self.local, "buf", None)
        if buf is None or buf.nbytes < n:
            buf = self.local.buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        return buf[:n]

    def scratch(self, n: int) -> memoryview:
        buf = getattr(self.local, "scratch", None)
        if buf is None or len(buf) < n:
            buf = self.local.scratch = bytearray(max(n, 1 << 20))
        return memoryview(buf)[:n]


def _tag(e: BaseException, index: int) -> None:
    """Mark which request of the task failed, for the driver's message (survives pickling)."""
    try:
        e.request_index = index
    except AttributeError:
        pass


def _runs(req: ReadRequest) -> list[tuple[int, int]]:
    """Byte ranges, relative to the request's start, of its runs of needed (non-SKIP) segments."""
    runs: list[tuple[int, int]] = []
    pos = 0
    for seg in req.segments:
        if seg.kind != SKIP:
            if runs and runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], pos + seg.length)
            else:
                runs.append((pos, pos + seg.length))
        pos += seg.length
    return runs


def _map(storage: Storage, req: ReadRequest) -> np.ndarray:
    """The request's bytes as a read-only view of the page cache (a mapping of the file)."""

    def do() -> np.ndarray:
        fd = os.open(local_path(req.file), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < req.end:  # touching a mapping past the end would kill the worker (SIGBUS)
                raise EOFError(f"end of file at byte {size}")
            start = req.start - req.start % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(fd, req.end - start, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=start)
        finally:
            os.close(fd)
        return np.frombuffer(m, np.uint8, req.end - req.start, req.start - start)

    # Storage's error handling: not found, truncated, transient errors retried
    return storage.call_with_retry(req.file, (req.start, req.end), do)


def _read_one(state: _WorkerState, storage: Storage, req: ReadRequest, checks, out, index: int):
    """Read one request; return (its needed bytes as a list of arrays, CRC32C per segment).
    ``out`` is this request's slice of the task buffer, or None to map the file instead."""
    try:
        if out is None:
            whole = _map(storage, req)
            views, pos = [], 0
            for seg in req.segments:
                views.append(whole[pos : pos + seg.length])
                pos += seg.length
            parts = [whole[a:b] for a, b in _runs(req)]
        else:
            views, pos = [], 0
            mv = memoryview(out)
            for seg in req.segments:
                if seg.kind == SKIP:
                    views.append(None)
                else:
                    views.append(mv[pos : pos + seg.length])
                    pos += seg.length
            skip = sum(s.length for s in req.segments if s.kind == SKIP)
            if skip:  # gaps and checksum-only bytes: read into scratch, never shipped; each
                # segment its own part of it, as its CRC32C is taken after the read
                scratch, at = state.scratch(skip), 0
                for k, s in enumerate(req.segments):
                    if s.kind == SKIP:
                        views[k] = scratch[at : at + s.length]
                        at += s.length
            storage.readinto(req.file, req.start, views)
            parts = [out]
    except Exception as e:
        _tag(e, index)
        raise
    return parts, [crc.value(v) if c else None for v, c in zip(views, checks)]


def _write_one(
    state: _WorkerState, storage: Storage, req: ReadRequest, checks, dests, fd: int, map_local: bool, index: int
) -> list:
    """Read one request of a local file and write its needed segments into the arena at
    ``dests``; return the CRC32C per segment (computed from the page cache's copy)."""
    try:
        if map_local and req.nbytes >= MAP_MIN_BYTES:
            src = memoryview(_map(storage, req))
        else:
            src = state.scratch(req.nbytes)
            storage.readinto(req.file, req.start, src)
        crcs, pos = [], 0
        for seg, check, dest in zip(req.segments, checks, dests):
            view = src[pos : pos + seg.length]
            if seg.kind != SKIP:
                try:
                    write_all(fd, view, dest)
                except OSError as e:
                    raise StorageError(
                        f"writing {req.file} bytes [{req.start + pos}, {req.start + pos + seg.length}) "
                        f"into shared memory failed ({e}): is /dev/shm full?"
                    ) from e
            crcs.append(crc.value(view) if check else None)
            pos += seg.length
    except Exception as e:
        _tag(e, index)
        raise
    return crcs


def _run_jobs(state: _WorkerState, threads: int, fn, jobs: list) -> list:
    """``fn(*job)`` for every job, on up to ``threads`` threads; every one has stopped when this
    returns or raises (none may still write into a buffer the next call reuses)."""
    if min(threads, len(jobs)) <= 1:
        return [fn(*job) for job in jobs]
    pool = state.executor(threads)
    futures = [pool.submit(fn, *job) for job in jobs]
    futures_wait(futures, return_when=FIRST_EXCEPTION)
    if any(f.done() and f.exception() is not None for f in futures):
        for f in futures:
            f.cancel()
        futures_wait(futures)
    return [f.result() for f in futures]


def _read(state: _WorkerState, task: ReadTask) -> ReadResult:
    t0 = time.perf_counter()
    storages = [state.storage(s) for s in task.storages]
    node = ray.get_runtime_context().get_node_id()
    if task.arena is not None:
        fd = state.use_arena(task.arena)
        if fd is None:
            return ReadResult(None, [], node, 0.0, arena_lost=True)
        try:
            crcs = _run_jobs(
                state,
                task.threads,
                _write_one,
                [
                    (state, storages[sid], req, checks, dests, fd, task.map_local, i)
                    for i, (req, sid, checks, dests) in enumerate(
                        zip(task.requests, task.storage_ids, task.checks, task.dests)
                    )
                ],
            )
        finally:
            state.done_arena(task.arena)
        return ReadResult(None, crcs, node, time.perf_counter() - t0)
    mapped = [
        task.map_local and storages[i].local and r.nbytes >= MAP_MIN_BYTES
        for r, i in zip(task.requests, task.storage_ids)
    ]
    sizes = [0 if m else sum(s.length for s in r.segments if s.kind != SKIP) for r, m in zip(task.requests, mapped)]
    data = state.buffer(sum(sizes))
    jobs = []
    pos = 0
    for i, (req, n) in enumerate(zip(task.requests, sizes)):
        out = None if mapped[i] else data[pos : pos + n]
        jobs.append((state, storages[task.storage_ids[i]], req, task.checks[i], out, i))
        pos += n
    results = _run_jobs(state, task.threads, _read_one, jobs)
    return ReadResult([p for p, _ in results], [c for _, c in results], node, time.perf_counter() - t0)


class _ReadWorker:
    """A read actor: runs tasks (``tasks_per_worker`` at once, in threads) with its state."""

    def __init__(self):
        self.state = _WorkerState()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def read(self, task: ReadTask) -> ReadResult:
        return _read(self.state, task)

    def open_arena(self, path: str) -> bool:
        """Open a driver's arena for the tasks of its run; False where it is not visible here."""
        return self.state.open_arena(path)

    def close_arena(self, path: str) -> None:
        self.state.done_arena(path, close=True)


ReadActor = ray.remote(_ReadWorker)
