"""The Ray executor: a plan's reads run on a pool of Ray actors; the driver places the results.

The only module of the package that imports ray. The driver groups the plan's requests into tasks
of tens of MB and sends each task as a small descriptor (the ``ReadRequest`` tuples, the
``Storage`` objects, which pickle as protocol + options, and which segments to checksum) to a read
actor. The actor reads storage itself, computes the CRC32C of every verified segment while the
bytes are hot, and returns only the needed bytes (coalesced gaps never travel), the CRCs and its
node id. The driver waits in completion order (``ray.wait``), copies each result once from the
object store into the assembly's arrays, and yields the outputs that completed, in batches. A
bounded number of tasks and bytes is in flight: a task's bytes count from submit until its result
is placed, and never exceed half the driver node's object store (every result lands there).

**Actors, not stateless tasks.** Both were measured on one node (2 shared cores, a 1.08 GB
checkpoint, warm page cache, interleaved runs): tasks took 1.2-1.4 x the thread executor's time,
an actor pool 0.9-1.1 x. An actor runs ``tasks_per_worker`` tasks at once in threads, so one
task's result is copied into the object store while the next one reads; a Ray task worker runs
one task at a time, and fractional-CPU tasks to get more of them make Ray start and reap worker
processes between runs (2.8 x). Actors also keep what should outlive a task: each ``Storage``'s
filesystem (s3fs/gcsfs sessions and connection pools), a thread pool for concurrent requests,
reusable read buffers. The price is a start-up (about a second for two actors here), paid once
per Ray session and placement: the pool is shared by every ``RayExecutor`` with the same
placement options (also those ``executor="ray"`` makes), started by ``workers_for`` so it
overlaps planning, and stays up idle until ``close()`` or ``ray.shutdown()``. Actors reserve no
CPU by default (``num_cpus=0``): they mostly wait on I/O, they must not take CPUs from the user's
own work, and a reservation could never be met on a head node started with ``--num-cpus=0``.
They are placed explicitly, a few per node, with node affinity, and restarted by Ray if they die
(reads are idempotent); if their node is gone, the run fails with a ``ReadWorkerLostError`` (a
``StorageError``) and the next run builds a new pool.

**Local files are mapped.** A read of 1 MiB or more from a local file maps the range
(``mmap`` + ``MAP_POPULATE``) and returns views of it, so the page cache is copied once, straight
into the object store, instead of into a buffer and then into the object store (that extra copy
made the executor 2.0 x slower than threads). The file size is checked first (touching a mapping
past the end would kill the worker). ``map_local=False`` reads with ``Storage.readinto`` instead.
What remains over the thread executor on one node is one copy per byte: the actor copies the
page cache into the object store and the driver copies that into the arrays, where threads read
straight into them; that costs 1.2-1.4 x the CPU time of the thread executor.

**Ray must already be initialized.** This module never calls ``ray.init`` with Ray's defaults
behind the caller's back (they start a local cluster sized to the whole machine, or join whatever
``RAY_ADDRESS`` names). Pass ``init_kwargs`` to let the executor call ``ray.init(**init_kwargs)``
itself; it logs that it did, and ``close()`` shuts that Ray down again.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..assemble import Assembly
from ..errors import CheckpointNotFoundError, DistRestoreError, StorageError
from ..format import crc
from ..plan import SKIP, ReadPlan, ReadRequest
from ..storage import Storage, local_path

log = logging.getLogger("distrestore")

__all__ = ["RayExecutor", "RayExecutorStats", "RayNotInitializedError", "RayPlacementError",
           "ReadWorkerLostError"]

_MAP_MIN_BYTES = 1 << 20  # smaller local reads use preadv into a reused buffer: a mapping costs more
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the whole range in at once (Linux)
_NUMPY_COPY_BYTES = 1 << 16
_MAX_WORKERS_PER_NODE = 8
_MAX_WORKERS = 64


class RayNotInitializedError(DistRestoreError, RuntimeError):
    """The Ray executor was asked to run but Ray is not initialized (and no ``init_kwargs``)."""


class RayPlacementError(DistRestoreError, RuntimeError):
    """No read actor could be placed or started where this executor's options allow."""


class ReadWorkerLostError(StorageError):
    """A Ray read actor (or its node) died while reading, past its restarts."""


@dataclass
class RayExecutorStats:
    """What the last ``run`` did (updated while it runs)."""

    workers: int = 0  # read actors in the pool
    worker_nodes: list[str] = field(default_factory=list)  # node id of each read actor
    startup_seconds: float = 0.0  # time run() waited for the pool to come up
    tasks: int = 0
    requests: int = 0
    bytes_read: int = 0  # bytes the actors read from storage (gaps included)
    bytes_shipped: int = 0  # bytes that came back through the object store (needed bytes only)
    max_inflight_bytes_seen: int = 0
    max_tasks_in_flight_seen: int = 0
    bytes_by_node: dict[str, int] = field(default_factory=dict)
    tasks_by_node: dict[str, int] = field(default_factory=dict)
    worker_seconds: float = 0.0  # summed time tasks spent reading and checksumming
    place_seconds: float = 0.0  # driver time spent copying results into place

    @property
    def nodes(self) -> list[str]:
        """Node ids where at least one read task ran."""
        return sorted(self.tasks_by_node)


class _Task(NamedTuple):
    """What one actor call reads: requests (local paths made absolute), the storage of each, and
    per segment whether to checksum it."""

    storages: tuple[Storage, ...]
    requests: tuple[ReadRequest, ...]
    storage_ids: tuple[int, ...]
    checks: tuple[tuple[bool, ...], ...]
    threads: int
    map_local: bool


class _Result(NamedTuple):
    parts: list  # per request: its needed (non-SKIP) bytes as a list of arrays, runs of whole segments
    crcs: list  # per request, per segment: CRC32C or None
    node_id: str
    seconds: float


class _Pool:
    """Read actors of one placement in one Ray session, and the node each one runs on."""

    def __init__(self, key, actors: list, nodes: list[str]):
        self.key = key
        self.actors = actors
        self.nodes = nodes
        self.ready = [a.node_id.remote() for a in actors]
        self.checked = False
        self.lock = threading.Lock()


# Read actors, shared by executors with the same placement in one Ray session: starting them
# costs about a second, which a restore of a few GB must not pay each time.
_POOLS: dict[tuple, _Pool] = {}
_POOLS_LOCK = threading.Lock()


class RayExecutor:
    """Run a plan's reads on a pool of Ray actors (see the module docstring for why actors).

    ``num_workers``: read actors in all (default: one per CPU of each node reads run on, at most
    8 per node and 64 in all). ``tasks_per_worker``: tasks an actor runs at once (threads).
    ``target_task_bytes``: requests are grouped into tasks of about this size.
    ``max_tasks_in_flight``: submitted but not yet placed tasks (default: every actor busy plus
    one queued each). ``threads_per_task``: concurrent requests inside a task (default 2 for
    local files, 16 for object stores, where a request mostly waits: 32-64 per node).
    ``nodes``: where the actors run: None (default) puts them on the driver's node for local
    files (a local path is only known to exist there) and spreads them over the cluster for
    object stores; ``"local"``, ``"spread"``, or a list of node ids.
    ``num_cpus`` and ``resources``: what each actor reserves (custom resources select nodes:
    ``{"reader": 1}`` runs actors only where a "reader" resource is, as many as fit).
    ``max_retries``: Ray restarts a dead actor and retries its tasks this often.
    ``map_local``: map local files (one copy into the object store) rather than read them.
    ``place_threads``: driver threads copying results into place (default: a quarter of the
    cores, 1 to 4).
    ``startup_timeout``: seconds to wait for the actors to start; those that cannot (no node
    with the resources) are dropped, and if none starts that is an error.
    ``init_kwargs``: call ``ray.init(**init_kwargs)`` when Ray is not initialized (otherwise
    that is an error). The actors are shared with other executors of the same placement and
    stay up until ``close()``; ``stats`` describes the last run.
    """

    def __init__(self, *, num_workers: int | None = None, target_task_bytes: int = 32 * 2**20,
                 max_tasks_in_flight: int | None = None, tasks_per_worker: int = 2,
                 threads_per_task: int | None = None, nodes: str | Sequence[str] | None = None,
                 num_cpus: float = 0, resources: Mapping[str, float] | None = None,
                 max_retries: int = 3, map_local: bool = True, place_threads: int | None = None,
                 startup_timeout: float = 120.0, init_kwargs: Mapping | None = None):
        if target_task_bytes <= 0:
            raise ValueError("target_task_bytes must be positive")
        if tasks_per_worker < 1 or (num_workers is not None and num_workers < 1):
            raise ValueError("num_workers and tasks_per_worker must be at least 1")
        if isinstance(nodes, str) and nodes not in ("local", "spread"):
            raise ValueError(
                f"nodes must be None, 'local', 'spread' or a list of node ids, not {nodes!r}")
        self.num_workers = num_workers
        self.target_task_bytes = target_task_bytes
        self.max_tasks_in_flight = max_tasks_in_flight
        self.tasks_per_worker = tasks_per_worker
        self.threads_per_task = threads_per_task
        self.nodes = nodes if nodes is None or isinstance(nodes, str) else list(nodes)
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.max_retries = max_retries
        self.map_local = map_local
        # the driver's copy out of the object store; a second thread only pays off where cores
        # are left over from the actors (on 2 cores it cost 5% more CPU and gained nothing)
        self.place_threads = max(1, place_threads or min(4, (os.cpu_count() or 2) // 4))
        self.startup_timeout = startup_timeout
        self.init_kwargs = dict(init_kwargs) if init_kwargs is not None else None
        self.stats = RayExecutorStats()
        self._stats_lock = threading.Lock()
        self._keys: set = set()  # the shared pools this executor used
        self._started_ray = False

    # -- Ray session and the actor pool --------------------------------------------------------

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
        """Kill the read actors this executor used (also for other executors that share them),
        and shut down the Ray this executor started (``init_kwargs``)."""
        with _POOLS_LOCK:
            pools = [_POOLS.pop(k) for k in self._keys if k in _POOLS]
            self._keys.clear()
        if ray.is_initialized():
            for pool in pools:
                for a in pool.actors:
                    try:
                        ray.kill(a)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _placement(self, local: bool) -> str | list[str]:
        if self.nodes is not None:
            return self.nodes
        return "local" if local else "spread"

    def _layout(self, local: bool) -> list[str]:
        """The node of every actor of the pool: up to one per CPU of each node (at least one on
        the driver's node or a named node; none on CPU-less nodes when spreading, the way
        head nodes are kept free), as many as ``num_cpus``/``resources`` let fit."""
        where = self._placement(local)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if where == "local":
            here = ray.get_runtime_context().get_node_id()
            nodes = [n for n in alive if n["NodeID"] == here]
        elif where == "spread":
            nodes = [n for n in alive if n.get("Resources", {}).get("CPU", 0) > 0] or alive
        else:
            by_id = {n["NodeID"]: n for n in alive}
            missing = [i for i in where if i not in by_id]
            if missing:
                raise ValueError(f"RayExecutor(nodes=...): no alive Ray node has id {missing[0]!r}")
            nodes = [by_id[i] for i in dict.fromkeys(where)]
        capacity = []
        for n in nodes:
            res = n.get("Resources", {})
            k = max(1, min(int(res.get("CPU", 0)), _MAX_WORKERS_PER_NODE))
            if self.num_cpus > 0:
                k = min(k, int(res.get("CPU", 0) // self.num_cpus))
            for name, need in self.resources.items():
                if need > 0:
                    k = min(k, int(res.get(name, 0) // need))
            if k > 0:
                capacity.append((n["NodeID"], k))
        if not capacity:
            raise RayPlacementError(
                f"no Ray node can host a read worker for this restore (placement {where!r}, "
                f"num_cpus={self.num_cpus}, resources={self.resources})")
        want = self.num_workers or min(_MAX_WORKERS, sum(k for _, k in capacity))
        layout: list[str] = []
        while len(layout) < want:  # round-robin, so every node gets some before any gets many
            for node, k in capacity:
                if len(layout) < want and (self.num_workers or layout.count(node) < k):
                    layout.append(node)
        return layout

    def _pool_key(self, local: bool) -> tuple:
        """Pools are shared by executors whose actors would be the same, in one Ray session."""
        ctx = ray.get_runtime_context()
        where = self._placement(local)
        return ((ctx.get_node_id(), ctx.get_job_id()),
                where if isinstance(where, str) else tuple(where),
                self.num_workers, self.num_cpus, tuple(sorted(self.resources.items())),
                self.tasks_per_worker, self.max_retries)

    def _ensure_pool(self, local: bool) -> _Pool:
        self._ensure_ray()
        key = self._pool_key(local)
        with _POOLS_LOCK:
            for k in [k for k in _POOLS if k[0] != key[0]]:
                del _POOLS[k]  # from an earlier Ray session: its actors are gone
            pool = _POOLS.get(key)
            if pool is None:
                layout = self._layout(local)
                actors = []
                for node in layout:
                    opts = dict(num_cpus=self.num_cpus, max_concurrency=self.tasks_per_worker,
                                max_restarts=self.max_retries, max_task_retries=self.max_retries,
                                # hard affinity: Ray 2.60 does not keep zero-CPU actors on a
                                # soft-affine node (all land on one); a dead node's actors are
                                # dropped at start-up or fail the run, and the pool is rebuilt
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                    if self.resources:
                        opts["resources"] = self.resources
                    actors.append(_ReadActor.options(**opts).remote())
                pool = _POOLS[key] = _Pool(key, actors, layout)
            self._keys.add(key)
        return pool

    def _wait_ready(self, pool: _Pool) -> None:
        with pool.lock:
            if not pool.checked:
                self._check_started(pool)

    def _check_started(self, pool: _Pool) -> None:
        _, pending = ray.wait(pool.ready, num_returns=len(pool.ready), timeout=self.startup_timeout)
        pending = set(pending)
        keep, nodes = [], []
        for actor, ref in zip(pool.actors, pool.ready):
            if ref not in pending:
                try:
                    nodes.append(ray.get(ref))
                    keep.append(actor)
                    continue
                except ray.exceptions.RayError:
                    pass
            ray.kill(actor)
        if not keep:
            with _POOLS_LOCK:
                if _POOLS.get(pool.key) is pool:
                    del _POOLS[pool.key]
            raise RayPlacementError(
                f"none of the {len(pool.actors)} Ray read workers started within "
                f"{self.startup_timeout:.0f} s (num_cpus={self.num_cpus}, "
                f"resources={self.resources}): the cluster cannot host them")
        if len(keep) < len(pool.actors):
            log.warning("distrestore: %d of %d Ray read workers did not start within %.0f s; "
                        "reading with the other %d", len(pool.actors) - len(keep),
                        len(pool.actors), self.startup_timeout, len(keep))
        pool.actors, pool.nodes, pool.checked = keep, nodes, True

    def _threads(self, local: bool) -> int:
        return self.threads_per_task or (2 if local else 16)

    def workers_for(self, local: bool) -> int:
        """Concurrent requests: actors x tasks per actor x threads per task. Starts the actor
        pool (without waiting for it), so its start-up overlaps planning."""
        pool = self._ensure_pool(local)
        return len(pool.actors) * self.tasks_per_worker * self._threads(local)

    def _object_store_cap(self) -> int | None:
        here = ray.get_runtime_context().get_node_id()
        for n in ray.nodes():
            if n.get("Alive") and n["NodeID"] == here:
                store = n.get("Resources", {}).get("object_store_memory")
                return int(store // 2) if store else None
        return None

    # -- running -------------------------------------------------------------------------------

    def run(self, plan: ReadPlan, assembly: Assembly, storages: Mapping[str, Storage], *,
            max_inflight_bytes: int | None = None, progress=None) -> Iterator[list[int]]:
        self.stats = stats = RayExecutorStats()
        if assembly.ready:
            yield assembly.ready
        if not plan.requests:
            return
        local = all(s.local for s in storages.values())
        pool = self._ensure_pool(local)
        t0 = time.perf_counter()
        self._wait_ready(pool)
        stats.startup_seconds = time.perf_counter() - t0
        stats.workers, stats.worker_nodes = len(pool.actors), list(pool.nodes)
        budget = max_inflight_bytes or float("inf")
        cap = self._object_store_cap()
        if cap:
            budget = min(budget, cap)
        actors = pool.actors
        max_tasks = self.max_tasks_in_flight or len(actors) * (self.tasks_per_worker + 1)
        tasks = list(reversed(self._group(plan, assembly, storages, local, budget)))
        load = [0] * len(actors)
        waiting: dict = {}  # ObjectRef -> (task, nbytes, actor index): submitted, not yet taken
        placing: dict = {}  # Future -> nbytes: results being copied into place
        placer = (ThreadPoolExecutor(self.place_threads, thread_name_prefix="distrestore-ray-place")
                  if self.place_threads > 1 else None)
        inflight = 0
        try:
            while tasks or waiting or placing:
                while tasks and len(waiting) + len(placing) < max_tasks and (
                        not (waiting or placing) or inflight + _task_bytes(tasks[-1]) <= budget):
                    task = tasks.pop()
                    nbytes = _task_bytes(task)
                    a = min(range(len(actors)), key=load.__getitem__)  # the least busy actor
                    waiting[actors[a].read.remote(task)] = (task, nbytes, a)
                    load[a] += 1
                    inflight += nbytes
                    stats.max_inflight_bytes_seen = max(stats.max_inflight_bytes_seen, inflight)
                    stats.max_tasks_in_flight_seen = max(stats.max_tasks_in_flight_seen,
                                                         len(waiting) + len(placing))
                if waiting and len(placing) < self.place_threads:
                    # completion order; while results are being placed, only look
                    ready, _ = ray.wait(list(waiting), num_returns=1,
                                        timeout=0.001 if placing else None)
                    for ref in ready:
                        task, nbytes, a = waiting.pop(ref)
                        load[a] -= 1
                        result = self._take(pool, ref, task, assembly)
                        del ref
                        if placer is None:
                            finished = self._place(task, result, assembly, progress, stats)
                            del result  # releases the object store copy
                            inflight -= nbytes
                            if finished:
                                yield finished
                        else:
                            placing[placer.submit(self._place, task, result, assembly, progress,
                                                  stats)] = nbytes
                            del result
                if placing:
                    block = not waiting or len(placing) >= self.place_threads
                    done, _ = futures_wait(placing, timeout=None if block else 0,
                                           return_when=FIRST_COMPLETED)
                    for fut in done:
                        inflight -= placing.pop(fut)
                        finished = fut.result()  # re-raises ChecksumMismatchError
                        if finished:
                            yield finished
        finally:
            for ref in waiting:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort; the task may be done already
                    pass
            if placer is not None:
                placer.shutdown(wait=True, cancel_futures=True)

    def _take(self, pool: _Pool, ref, task: _Task, assembly: Assembly) -> _Result:
        try:
            return _get(ref, task, assembly)
        except ReadWorkerLostError:
            with _POOLS_LOCK:  # the next run starts a new pool where nodes are alive
                if _POOLS.get(pool.key) is pool:
                    del _POOLS[pool.key]
            raise

    def _group(self, plan: ReadPlan, assembly: Assembly, storages: Mapping[str, Storage],
               local: bool, budget: float) -> list[_Task]:
        """Requests in plan order, grouped into tasks of about ``target_task_bytes`` (never over
        the budget unless one request alone is)."""
        limit = min(self.target_task_bytes, budget)
        threads = self._threads(local)
        # the rule of Assembly.checksums: a segment is checksummed when its entry is verified
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
                # actors run in another directory (or on another node): absolute paths
                reqs.append(r._replace(file=os.path.abspath(r.file))
                            if st.local and "://" not in r.file else r)
            checks = tuple(tuple(s.entry >= 0 and check[s.entry] for s in r.segments) for r in cur)
            out.append(_Task(tuple(st_list), tuple(reqs), tuple(st_ids), checks, threads,
                             self.map_local))
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
        finished: list[int] = []
        shipped = 0
        for req, parts, crcs in zip(task.requests, result.parts, result.crcs):
            shipped += _place_parts(assembly, req, parts)
            done = assembly.complete(req, crcs)  # raises ChecksumMismatchError
            if progress is not None:
                progress.advance(req.nbytes, len(done))
            finished.extend(done)
        nbytes = _task_bytes(task)
        with self._stats_lock:
            stats.place_seconds += time.perf_counter() - t0
            stats.tasks += 1
            stats.requests += len(task.requests)
            stats.bytes_read += nbytes
            stats.bytes_shipped += shipped
            stats.worker_seconds += result.seconds
            stats.bytes_by_node[result.node_id] = stats.bytes_by_node.get(result.node_id, 0) + nbytes
            stats.tasks_by_node[result.node_id] = stats.tasks_by_node.get(result.node_id, 0) + 1
        return finished


def _place_parts(assembly: Assembly, req: ReadRequest, parts: Sequence[np.ndarray]) -> int:
    """Copy a request's needed bytes (``parts``: runs of whole segments, in order) from the
    object store into the assembly's buffers: the one copy on the driver. Big segments are
    copied by numpy, which releases the GIL, so several placing threads run in parallel."""
    views = assembly.buffers(req)
    it = iter(parts)
    src = memoryview(b"")
    pos = shipped = 0
    for seg, view in zip(req.segments, views):
        if seg.kind == SKIP:
            continue
        if pos == src.nbytes:
            src = memoryview(next(it)).cast("B")
            shipped += src.nbytes
            pos = 0
        if seg.length >= _NUMPY_COPY_BYTES:
            np.copyto(np.frombuffer(view, np.uint8), np.frombuffer(src, np.uint8, seg.length, pos))
        else:
            view[:] = src[pos:pos + seg.length]
        pos += seg.length
    return shipped


def _task_bytes(task: _Task) -> int:
    return sum(r.nbytes for r in task.requests)


def _where(task: _Task, assembly: Assembly, index: int | None) -> str:
    req = task.requests[index if index is not None else 0]
    more = ("" if index is not None or len(task.requests) == 1
            else f" and {len(task.requests) - 1} more ranges")
    return f"{req.file} bytes [{req.start}, {req.end}){more} (tensors {assembly.tensor_names(req)})"


def _get(ref, task: _Task, assembly: Assembly) -> _Result:
    """``ray.get`` that re-raises an actor's distrestore error as itself, naming the tensors."""
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
    except ray.exceptions.RayError as e:  # the actor (or its node) died past its restarts
        raise ReadWorkerLostError(
            f"a Ray read worker failed while reading {_where(task, assembly, None)}: "
            f"{type(e).__name__}: {e}") from e


# -- the actor side ----------------------------------------------------------------------------

class _WorkerState:
    """What an actor keeps between tasks: filesystems (one per distinct ``Storage``, so
    object-store sessions outlive a task), a thread pool, and per-thread read buffers."""

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
            m = mmap.mmap(fd, req.end - start, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                          prot=mmap.PROT_READ, offset=start)
        finally:
            os.close(fd)
        return np.frombuffer(m, np.uint8, req.end - req.start, req.start - start)
    # Storage's error handling: not found, truncated, transient errors retried
    return storage._call(req.file, (req.start, req.end), do)


def _read_one(state: _WorkerState, storage: Storage, req: ReadRequest, checks, out, index: int):
    """Read one request; return (its needed bytes as a list of arrays, CRC32C per segment).
    ``out`` is this request's slice of the task buffer, or None to map the file instead."""
    try:
        if out is None:
            whole = _map(storage, req)
            views, pos = [], 0
            for seg in req.segments:
                views.append(whole[pos:pos + seg.length])
                pos += seg.length
            parts = [whole[a:b] for a, b in _runs(req)]
        else:
            views, pos = [], 0
            mv = memoryview(out)
            for seg in req.segments:
                if seg.kind == SKIP:
                    views.append(None)
                else:
                    views.append(mv[pos:pos + seg.length])
                    pos += seg.length
            skip = max((s.length for s in req.segments if s.kind == SKIP), default=0)
            if skip:  # coalesced gaps are read into scratch and never shipped
                scratch = state.scratch(skip)
                views = [v if v is not None else scratch[:s.length]
                         for v, s in zip(views, req.segments)]
            storage.readinto(req.file, req.start, views)
            parts = [out]
    except Exception as e:  # noqa: BLE001 - tagged for the driver, re-raised as is
        _tag(e, index)
        raise
    return parts, [crc.value(v) if c else None for v, c in zip(views, checks)]


def _read(state: _WorkerState, task: _Task) -> _Result:
    t0 = time.perf_counter()
    storages = [state.storage(s) for s in task.storages]
    mapped = [task.map_local and storages[i].local and r.nbytes >= _MAP_MIN_BYTES
              for r, i in zip(task.requests, task.storage_ids)]
    sizes = [0 if m else sum(s.length for s in r.segments if s.kind != SKIP)
             for r, m in zip(task.requests, mapped)]
    data = state.buffer(sum(sizes))
    jobs = []
    pos = 0
    for i, (req, n) in enumerate(zip(task.requests, sizes)):
        out = None if mapped[i] else data[pos:pos + n]
        jobs.append((storages[task.storage_ids[i]], req, task.checks[i], out, i))
        pos += n
    if min(task.threads, len(jobs)) <= 1:
        results = [_read_one(state, *job) for job in jobs]
    else:
        pool = state.executor(task.threads)
        futures = [pool.submit(_read_one, state, *job) for job in jobs]
        futures_wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            for f in futures:
                f.cancel()
            futures_wait(futures)  # none may still write into the buffer the next call reuses
        results = [f.result() for f in futures]
    node = ray.get_runtime_context().get_node_id()
    return _Result([p for p, _ in results], [c for _, c in results], node, time.perf_counter() - t0)


class _ReadWorker:
    """A read actor: runs tasks (``tasks_per_worker`` at once, in threads) with its state."""

    def __init__(self):
        self.state = _WorkerState()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def read(self, task: _Task) -> _Result:
        return _read(self.state, task)


_ReadActor = ray.remote(_ReadWorker)
