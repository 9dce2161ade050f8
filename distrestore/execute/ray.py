"""The Ray executor: a plan's reads run as Ray tasks on the cluster's nodes; the driver places them.

The only module of the package that imports ray. The driver groups the plan's requests into tasks
of tens of MB and sends each task as a small descriptor (the ``ReadRequest`` tuples, the
``Storage`` objects, which pickle as protocol + options, and which segments to checksum). The
task reads storage itself into one buffer holding only the needed bytes (coalesced gaps land in a
scratch buffer and never travel), computes the CRC32C of each verified segment while the bytes are
hot, and returns ``(bytes, crcs, node id)``. The driver waits in completion order (``ray.wait``),
copies each result once from the object store into the assembly's arrays and yields the outputs
that completed. A bounded number of tasks and bytes is in flight; a task's bytes count from submit
until its result is placed.

Stateless tasks, not an actor pool (both were measured, see ``benchmarks/``): on one node they
read at the same speed, but actors cost a process start per worker for every executor (0.4 s
each here) and a lifecycle to manage (reservations that can hang, actors to kill, restarts on
node loss), while tasks run on Ray's warm worker pool, spread over whatever nodes exist, and are
retried by Ray when a worker or node dies (reads are idempotent). What actors would keep alive,
a task worker keeps in its own process (:class:`_WorkerState`): the filesystem of each
``Storage`` (so s3fs/gcsfs sessions and connection pools survive across tasks), a thread pool for
concurrent requests and a reusable read buffer (fresh pages cost more than the copy).

Ray must already be initialized: this module never calls ``ray.init`` with Ray's defaults behind
the caller's back (they would start a local cluster sized to the whole machine, or join whatever
cluster ``RAY_ADDRESS`` names). Pass ``init_kwargs`` to let the executor call
``ray.init(**init_kwargs)`` itself; it logs that it did, and ``close()`` shuts that Ray down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..assemble import Assembly
from ..errors import CheckpointNotFoundError, DistRestoreError, StorageError
from ..format import crc
from ..plan import SKIP, ReadPlan, ReadRequest
from ..storage import Storage, is_local

log = logging.getLogger("distrestore")

__all__ = ["RayExecutor", "RayExecutorStats", "RayNotInitializedError"]


class RayNotInitializedError(DistRestoreError, RuntimeError):
    """The Ray executor was asked to run but Ray is not initialized (and no ``init_kwargs``)."""


@dataclass
class RayExecutorStats:
    """What the last ``run`` did (updated while it runs)."""

    tasks: int = 0
    requests: int = 0
    bytes_read: int = 0  # bytes the workers read from storage (gaps included)
    bytes_shipped: int = 0  # bytes that came back through the object store (needed bytes only)
    max_inflight_bytes_seen: int = 0
    max_tasks_in_flight_seen: int = 0
    bytes_by_node: dict[str, int] = field(default_factory=dict)
    tasks_by_node: dict[str, int] = field(default_factory=dict)
    worker_seconds: float = 0.0  # summed time the tasks spent reading and checksumming
    place_seconds: float = 0.0  # driver time spent copying results into place

    @property
    def nodes(self) -> list[str]:
        """Node ids that ran at least one read task."""
        return sorted(self.tasks_by_node)


class _Task(NamedTuple):
    """What one Ray task reads: requests (local paths made absolute), each with its storage and
    a flag per segment saying whether to checksum it."""

    storages: tuple[Storage, ...]
    requests: tuple[ReadRequest, ...]
    storage_ids: tuple[int, ...]
    checks: tuple[tuple[bool, ...], ...]
    threads: int


class _Result(NamedTuple):
    data: np.ndarray  # the needed (non-SKIP) bytes of every request, in order
    crcs: list  # per request, per segment: CRC32C or None
    node_id: str
    seconds: float


def _needed(req: ReadRequest) -> int:
    return sum(s.length for s in req.segments if s.kind != SKIP)


class RayExecutor:
    """Run a plan's reads as Ray tasks.

    ``num_workers``: tasks that read at once (default: the CPUs of the nodes reads run on, divided
    by ``num_cpus``). ``target_task_bytes``: requests are grouped into tasks of about this size.
    ``max_tasks_in_flight``: submitted but not yet placed tasks (default: 2 per worker, so every
    worker has its next task queued). ``threads_per_task``: concurrent requests inside a task
    (default 2 for local files, 32 for object stores, where a request mostly waits).
    ``nodes``: where reads run: None (default) runs local-file reads on the driver's node (a
    local path is only known to exist there) and object-store reads spread over the cluster;
    ``"local"``, ``"spread"``, or a list of node ids (round-robin, soft affinity).
    ``num_cpus`` and ``resources``: what each task reserves (custom resources select nodes).
    ``max_retries``: Ray re-runs a task whose worker or node died. ``init_kwargs``: call
    ``ray.init(**init_kwargs)`` when Ray is not initialized (otherwise that is an error).
    ``max_inflight_bytes`` of ``run`` is further capped at half the driver node's object store,
    where every result lands before it is placed.
    """

    def __init__(self, *, num_workers: int | None = None, target_task_bytes: int = 32 * 2**20,
                 max_tasks_in_flight: int | None = None, threads_per_task: int | None = None,
                 nodes: str | Sequence[str] | None = None, num_cpus: float = 1,
                 resources: Mapping[str, float] | None = None, max_retries: int = 3,
                 init_kwargs: Mapping | None = None):
        if target_task_bytes <= 0:
            raise ValueError("target_task_bytes must be positive")
        if isinstance(nodes, str) and nodes not in ("local", "spread"):
            raise ValueError(f"nodes must be None, 'local', 'spread' or a list of node ids, not {nodes!r}")
        self.num_workers = num_workers
        self.target_task_bytes = target_task_bytes
        self.max_tasks_in_flight = max_tasks_in_flight
        self.threads_per_task = threads_per_task
        self.nodes = nodes if nodes is None or isinstance(nodes, str) else list(nodes)
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs) if init_kwargs is not None else None
        self.stats = RayExecutorStats()
        self._started_ray = False

    # -- Ray session ---------------------------------------------------------------------------

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        if self.init_kwargs is None:
            raise RayNotInitializedError(
                "Ray is not initialized: call ray.init(...) before restoring with the Ray executor, "
                "or pass RayExecutor(init_kwargs={...}) to let it call ray.init(**init_kwargs)")
        log.info("distrestore: Ray is not initialized; calling ray.init(%s)",
                 ", ".join(f"{k}={v!r}" for k, v in self.init_kwargs.items()))
        ray.init(**self.init_kwargs)
        self._started_ray = True

    def close(self) -> None:
        """Shut down the Ray session this executor started with ``init_kwargs`` (if any)."""
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- placement -----------------------------------------------------------------------------

    def _placement(self, local: bool) -> str | list[str]:
        if self.nodes is not None:
            return self.nodes
        return "local" if local else "spread"

    def _alive_nodes(self) -> list[dict]:
        return [n for n in ray.nodes() if n.get("Alive")]

    def _slots(self, local: bool) -> int:
        """How many tasks can read at once where this executor's reads run."""
        if self.num_workers:
            return self.num_workers
        where = self._placement(local)
        nodes = self._alive_nodes()
        if where == "local":
            here = ray.get_runtime_context().get_node_id()
            nodes = [n for n in nodes if n["NodeID"] == here]
        elif where != "spread":
            wanted = set(where)
            nodes = [n for n in nodes if n["NodeID"] in wanted]
        if self.resources:
            nodes = [n for n in nodes if all(n["Resources"].get(k, 0) >= v
                                             for k, v in self.resources.items())] or nodes
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        slots = int(cpus // self.num_cpus) if self.num_cpus > 0 else 2 * max(1, len(nodes))
        return max(1, min(slots, 256))

    def _threads(self, local: bool) -> int:
        return self.threads_per_task or (2 if local else 32)

    def workers_for(self, local: bool) -> int:
        self._ensure_ray()
        return self._slots(local) * self._threads(local)

    def _object_store_cap(self) -> int | None:
        here = ray.get_runtime_context().get_node_id()
        for n in self._alive_nodes():
            if n["NodeID"] == here:
                store = n["Resources"].get("object_store_memory")
                return int(store // 2) if store else None
        return None

    def _task_options(self, local: bool) -> list[dict]:
        """Ray options for each task, cycled over (one entry per target node for a node list)."""
        base = {"num_cpus": self.num_cpus, "max_retries": self.max_retries,
                "retry_exceptions": False}
        if self.resources:
            base["resources"] = self.resources
        where = self._placement(local)
        if where == "spread":
            return [dict(base, scheduling_strategy="SPREAD")]
        ids = [ray.get_runtime_context().get_node_id()] if where == "local" else where
        return [dict(base, scheduling_strategy=NodeAffinitySchedulingStrategy(i, soft=True))
                for i in ids]

    # -- running -------------------------------------------------------------------------------

    def run(self, plan: ReadPlan, assembly: Assembly, storages: Mapping[str, Storage], *,
            max_inflight_bytes: int | None = None, progress=None) -> Iterator[int]:
        self.stats = stats = RayExecutorStats()
        yield from assembly.ready
        if not plan.requests:
            return
        self._ensure_ray()
        local = all(s.local for s in storages.values())
        budget = max_inflight_bytes or float("inf")
        cap = self._object_store_cap()
        if cap:
            budget = min(budget, cap)
        slots = self._slots(local)
        max_tasks = self.max_tasks_in_flight or 2 * slots
        tasks = list(reversed(self._group(plan, assembly, storages, local, budget)))
        options = self._task_options(local)
        submitted = 0
        running: dict = {}  # ObjectRef -> (task, nbytes)
        inflight = 0
        try:
            while tasks or running:
                while tasks and len(running) < max_tasks and (
                        not running or inflight + _task_bytes(tasks[-1]) <= budget):
                    task = tasks.pop()
                    nbytes = _task_bytes(task)
                    ref = self._submit(task, options[submitted % len(options)])
                    submitted += 1
                    running[ref] = (task, nbytes)
                    inflight += nbytes
                    stats.max_inflight_bytes_seen = max(stats.max_inflight_bytes_seen, inflight)
                    stats.max_tasks_in_flight_seen = max(stats.max_tasks_in_flight_seen, len(running))
                [ref], _ = ray.wait(list(running), num_returns=1)
                task, nbytes = running.pop(ref)
                result = _get(ref, task, assembly)
                del ref
                finished = self._place(task, result, assembly, progress, stats)
                del result  # releases the object store copy
                inflight -= nbytes
                yield from finished
        finally:
            for ref in running:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort; the task may be done already
                    pass

    def _submit(self, task: _Task, options: dict):
        return _read_task.options(**options).remote(task)

    def _group(self, plan: ReadPlan, assembly: Assembly, storages: Mapping[str, Storage],
               local: bool, budget: float) -> list[_Task]:
        """Requests in plan order, grouped into tasks of about ``target_task_bytes`` (never over
        the budget unless one request alone is)."""
        limit = min(self.target_task_bytes, budget)
        threads = self._threads(local)
        check = assembly._check
        out: list[_Task] = []
        cur: list[ReadRequest] = []
        size = 0

        def flush():
            if not cur:
                return
            st_list: list[Storage] = []
            st_ids = []
            reqs = []
            for r in cur:
                st = storages[r.file]
                for i, s in enumerate(st_list):
                    if s is st:
                        break
                else:
                    i = len(st_list)
                    st_list.append(st)
                st_ids.append(i)
                # workers may run in another directory (or on another node): absolute paths
                reqs.append(r._replace(file=os.path.abspath(r.file))
                            if st.local and "://" not in r.file else r)
            checks = tuple(tuple(s.entry >= 0 and check[s.entry] for s in r.segments) for r in cur)
            out.append(_Task(tuple(st_list), tuple(reqs), tuple(st_ids), checks, threads))
            cur.clear()

        for req in plan.requests:
            if cur and size + req.nbytes > limit:
                flush()
                size = 0
            cur.append(req)
            size += req.nbytes
        flush()
        return out

    def _place(self, task: _Task, result: _Result, assembly: Assembly, progress,
               stats: RayExecutorStats) -> list[int]:
        t0 = time.perf_counter()
        data = result.data
        finished: list[int] = []
        pos = 0
        for req, crcs in zip(task.requests, result.crcs):
            need = _needed(req)
            assembly.place(req, data[pos:pos + need], gaps_included=False)
            pos += need
            done = assembly.complete(req, crcs)  # raises ChecksumMismatchError
            if progress is not None:
                progress.advance(req.nbytes, len(done))
            finished.extend(done)
        stats.place_seconds += time.perf_counter() - t0
        nbytes = _task_bytes(task)
        stats.tasks += 1
        stats.requests += len(task.requests)
        stats.bytes_read += nbytes
        stats.bytes_shipped += pos
        stats.worker_seconds += result.seconds
        stats.bytes_by_node[result.node_id] = stats.bytes_by_node.get(result.node_id, 0) + nbytes
        stats.tasks_by_node[result.node_id] = stats.tasks_by_node.get(result.node_id, 0) + 1
        return finished


def _task_bytes(task: _Task) -> int:
    return sum(r.nbytes for r in task.requests)


def _get(ref, task: _Task, assembly: Assembly) -> _Result:
    """``ray.get`` that re-raises a worker's distrestore error as itself, naming the tensors."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if not isinstance(cause, BaseException):
            raise
        index = getattr(cause, "request_index", None)
        if isinstance(cause, (StorageError, CheckpointNotFoundError)) and index is not None:
            req = task.requests[index]
            raise type(cause)(f"{cause} (reading tensors {assembly.tensor_names(req)})") from e
        if isinstance(cause, DistRestoreError):
            raise cause from e
        raise


# -- the worker side ---------------------------------------------------------------------------

class _WorkerState:
    """Per worker process: filesystems (one per distinct ``Storage``, so object-store sessions
    outlive a task), a thread pool, and per-thread read buffers."""

    _MAX_STORAGES = 16

    def __init__(self):
        self.lock = threading.Lock()
        self.storages: list[Storage] = []
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0
        self.local = threading.local()

    def storage(self, st: Storage) -> Storage:
        with self.lock:
            for i, s in enumerate(self.storages):
                if s == st:
                    if i:
                        self.storages.insert(0, self.storages.pop(i))
                    return s
            self.storages.insert(0, st)
            del self.storages[self._MAX_STORAGES:]
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
        """A reusable buffer of this thread (Ray copies a task's return value into the object
        store before the worker runs its next task, so reusing it is safe)."""
        buf = getattr(self.local, "buf", None)
        if buf is None or buf.nbytes < n:
            buf = self.local.buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        return buf[:n]

    def scratch(self, n: int) -> memoryview:
        buf = getattr(self.local, "scratch", None)
        if buf is None or len(buf) < n:
            buf = self.local.scratch = bytearray(max(n, 1 << 20))
        return memoryview(buf)[:n]


_state: _WorkerState | None = None
_state_lock = threading.Lock()


def _worker_state() -> _WorkerState:
    global _state
    if _state is None:
        with _state_lock:
            if _state is None:
                _state = _WorkerState()
    return _state


def _read_one(state: _WorkerState, storage: Storage, req: ReadRequest, checks, out: np.ndarray,
              index: int) -> list:
    views = []
    pos = 0
    mv = memoryview(out)
    for seg in req.segments:
        if seg.kind == SKIP:
            views.append(None)
        else:
            views.append(mv[pos:pos + seg.length])
            pos += seg.length
    skip = max((s.length for s in req.segments if s.kind == SKIP), default=0)
    if skip:
        scratch = state.scratch(skip)
        views = [v if v is not None else scratch[:s.length] for v, s in zip(views, req.segments)]
    try:
        storage.readinto(req.file, req.start, views)
    except Exception as e:  # noqa: BLE001 - tagged for the driver, re-raised as is
        try:
            e.request_index = index
        except AttributeError:
            pass
        raise
    return [crc.value(v) if c else None for v, c in zip(views, checks)]


def _read(task: _Task) -> _Result:
    t0 = time.perf_counter()
    state = _worker_state()
    storages = [state.storage(s) for s in task.storages]
    sizes = [_needed(r) for r in task.requests]
    data = state.buffer(sum(sizes))
    jobs = []
    pos = 0
    for i, (req, n) in enumerate(zip(task.requests, sizes)):
        jobs.append((storages[task.storage_ids[i]], req, task.checks[i], data[pos:pos + n], i))
        pos += n
    threads = min(task.threads, len(jobs))
    if threads <= 1:
        crcs = [_read_one(state, *job) for job in jobs]
    else:
        pool = state.executor(task.threads)
        futures = [pool.submit(_read_one, state, *job) for job in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            for f in futures:
                f.cancel()
            wait(futures)  # none may still write into the buffer the next task reuses
        crcs = [f.result() for f in futures]
    node = ray.get_runtime_context().get_node_id()
    return _Result(data, crcs, node, time.perf_counter() - t0)


_read_task = ray.remote(_read)
