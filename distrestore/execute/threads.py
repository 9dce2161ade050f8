"""The thread executor: requests run on a pool of threads in this process.

Threads suit both regimes: local reads (with their CRC32C) release the GIL, so a few threads per
core keep copies out of the page cache running in parallel (1 and 2 per core measured the same wall
time here, warm and cold; 2 stay the default for disks that want more requests in flight); object stores
spend most of a request waiting, so many threads keep many requests in flight.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ..errors import CheckpointNotFoundError, StorageError
from ..readplan import ReadPlan, ReadRequest
from ..storage import Storage
from .sink import ReadSink


class ThreadExecutor:
    """Run requests on threads. ``workers``: threads (default: 2 per core, at most 16, for local
    files; 32 for object stores, where each request mostly waits on the network)."""

    def __init__(self, workers: int | None = None, *, remote_workers: int | None = None):
        self.workers = workers
        self.remote_workers = remote_workers

    def workers_for(self, local: bool) -> int:
        if local:
            return self.workers or min(16, 2 * (os.cpu_count() or 2))
        return self.remote_workers or self.workers or 32

    def run(
        self,
        plan: ReadPlan,
        sink: ReadSink,
        storages: Mapping[str, Storage],
        *,
        max_inflight_bytes: int | None = None,
        progress=None,
    ) -> Iterator[int]:
        if sink.ready:
            yield sink.ready
        if not plan.requests:
            return
        local = all(s.local for s in storages.values())
        workers = min(self.workers_for(local), len(plan.requests))
        budget = max_inflight_bytes or float("inf")
        pending = list(reversed(plan.requests))  # pop() from the end keeps plan order
        running: dict[Future, ReadRequest] = {}
        inflight = 0
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="distrestore-read")
        try:
            while pending or running:
                while pending and len(running) < workers and (not running or inflight + pending[-1].nbytes <= budget):
                    req = pending.pop()
                    inflight += req.nbytes
                    running[pool.submit(read_request, req, sink, storages[req.file])] = req
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    req = running.pop(fut)
                    inflight -= req.nbytes
                    finished = fut.result()  # re-raises the worker's error
                    if progress is not None:
                        progress.advance(req.nbytes, len(finished))
                    if finished:
                        yield finished
        finally:
            for fut in running:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def read_request(req: ReadRequest, sink: ReadSink, storage: Storage) -> list[int]:
    """Read one request into its buffers, checksum it (local reads do so while copying, others
    right after, while the bytes are hot), and report it done."""
    views = sink.buffers(req)
    try:
        crcs = storage.readinto(req.file, req.start, views)
    except (StorageError, CheckpointNotFoundError) as e:
        raise type(e)(f"{e} (reading tensors {sink.tensor_names(req)})") from e
    return sink.complete(req, sink.checksums(req, views, crcs))
