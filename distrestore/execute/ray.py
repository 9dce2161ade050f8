"""The Ray executor: a plan's reads run on a pool of Ray actors (local files: in the driver).

The only module of the package that imports ray. The driver groups the plan's requests into tasks
of tens of MB and sends each task as a small descriptor (the ``ReadRequest`` tuples, the
``Storage`` objects, which pickle as protocol + options, and which segments to checksum) to a read
actor. The actor reads storage itself and computes the CRC32C of every verified segment while the
bytes are hot. Where the bytes go depends on where the actor runs (below): into the driver's
arrays through shared memory, or back through the object store. The driver waits in completion
order (``ray.wait``), places what came back, checks the CRCs (``Assembly.complete``) and yields
the outputs that completed, in batches. A bounded number of tasks and bytes is in flight: a
task's bytes count from submit until its result is placed, and results that travel through the
object store never exceed half the driver node's object store.

**Local files are read by the driver.** A local path names a file on the driver's node, and
the driver's own arrays are where its bytes must end up. By default (``local_reads="driver"``,
``nodes`` unset) the driver reads local files itself, with the thread executor, straight into
its arrays: any other process on the node must hand the bytes over across a process boundary,
which measured 2.5-4 x the thread executor's time here (below; benchmarks/RESULTS.md). Actors
read what the driver cannot (object stores, spread over the cluster) and local files on nodes
named with ``nodes``; ``local_reads="actors"`` makes actors on the driver's node read local
files too, as follows.

**Same node: shared memory, no copy.** For local files read by actors, the driver allocates the
assembly's destination buffers (outputs that reads land in, packed and staging buffers) in one
arena in /dev/shm (``shm.Arena``, through ``Assembly.allocate``): its numpy arrays are views of a shared
mapping. Actors on the driver's Ray node (by node id: other nodes, even on this machine, do not
count) open the arena before the run's first task; its name is unlinked right then, so nothing
outlives a crash. A task for them carries each segment's offset in the arena; the actor
``pwrite``s the bytes there (``pwrite`` into the tmpfs file costs what ``preadv`` into anonymous
memory does; writing through a mapping took 2.2 x that, in 4 KiB faults) and returns only the
CRCs. Each byte is copied once, from the page cache into the arrays, as with the thread
executor. Without room in /dev/shm (containers often give it 64 MiB), for actors elsewhere and
for object stores (S3, GCS), results are shipped: the actor returns only the needed bytes
(coalesced gaps never travel) and the driver copies them out of the object store, one more copy
per byte. An actor that Ray restarted mid-run has lost the arena; its tasks are shipped instead.
What remains over the thread executor is tmpfs itself: it gets 4 KiB pages (no transparent huge
pages by default), so the actors spend ~0.7 CPU-s per GB allocating and filling the arena where
threads fill huge-page anonymous memory, and the driver's first touch of its arrays maps them
4 KiB at a time (~0.08 s per GB, after the restore). Measured (2 shared cores, 1.08 GB, warm
page cache, actors started): 0.65 s through the arena, 0.90 s shipped, threads 0.16 s.

**Actors, not stateless tasks.** Both were measured on one node (2 shared cores, a 1.08 GB
checkpoint, warm page cache, interleaved runs, before the arena): tasks took 1.2-1.4 x the
thread executor's time, an actor pool 0.9-1.1 x. An actor runs ``tasks_per_worker`` tasks at
once in threads, so one task's result is copied out while the next one reads; a Ray task worker
runs one task at a time, and fractional-CPU tasks to get more of them make Ray start and reap
worker processes between runs (2.8 x). Actors also keep what should outlive a task: each
``Storage``'s filesystem (s3fs/gcsfs sessions and connection pools), a thread pool for
concurrent requests, reusable read buffers. The price is a start-up (about a second for two
actors here), paid once per Ray session and placement: the pool is shared by every
``RayExecutor`` with the same placement options (also those ``executor="ray"`` makes), started
by ``workers_for`` so it overlaps planning, or before any restore by ``RayExecutor.start()``,
and stays up idle until ``close()`` or ``ray.shutdown()``. Actors reserve no CPU by default
(``num_cpus=0``): they mostly wait on I/O, they must not take CPUs from the user's own work, and
a reservation could never be met on a head node started with ``--num-cpus=0``. They are placed
explicitly, a few per node, with node affinity, and restarted by Ray if they die (reads are
idempotent); if their node is gone, the run fails with a ``ReadWorkerLostError`` (a
``StorageError``) and the next run builds a new pool.

**Local files are mapped.** A read of 1 MiB or more from a local file maps the range
(``mmap`` + ``MAP_POPULATE``) and writes or returns views of it, instead of reading into a
buffer first (that extra copy made the shipping route 2.0 x slower than threads). The file size
is checked first (touching a mapping past the end would kill the worker). ``map_local=False``
reads with ``Storage.readinto`` instead.

**Ray must already be initialized.** This module never calls ``ray.init`` with Ray's defaults
behind the caller's back (they start a local cluster sized to the whole machine, or join whatever
``RAY_ADDRESS`` names). Pass ``init_kwargs`` to let the executor call ``ray.init(**init_kwargs)``
itself; it logs that it did, and ``close()`` shuts that Ray down again.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..assemble import Assembly
from ..errors import CheckpointNotFoundError, DistRestoreError, StorageError
from ..format import crc, dtypes
from ..plan import DIRECT, PACKED, SKIP, STAGED, ReadPlan, ReadRequest
from ..storage import Storage, local_path
from .shm import Arena, write_all
from .threads import ThreadExecutor

log = logging.getLogger("distrestore")

__all__ = ["RayExecutor", "RayExecutorStats", "RayNotInitializedError", "RayPlacementError", "ReadWorkerLostError"]

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


class _ArenaLost(Exception):
    """An actor was sent a task for an arena it does not have open (it was restarted since)."""


@dataclass
class RayExecutorStats:
    """What the last ``run`` did (updated while it runs)."""

    route: str = ""  # "driver": local files read in the driver's process; "actors": by read actors
    workers: int = 0  # read actors in the pool
    worker_nodes: list[str] = field(default_factory=list)  # node id of each read actor
    startup_seconds: float = 0.0  # time run() waited for the pool to come up
    tasks: int = 0
    requests: int = 0
    bytes_read: int = 0  # bytes the actors read from storage (gaps included)
    bytes_shipped: int = 0  # bytes that came back through the object store (needed bytes only)
    bytes_shared: int = 0  # bytes actors wrote straight into the driver's shared-memory arena
    arena_bytes: int = 0  # size of that arena (0: the run had none, every result was shipped)
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
    arena: str | None = None  # shared-memory arena the actor has open: write there, ship nothing
    dests: tuple[tuple[int, ...], ...] | None = None  # per request, per segment: offset in the arena


class _Result(NamedTuple):
    parts: list | None  # per request: its needed (non-SKIP) bytes as a list of arrays, runs of
    # whole segments; None when they were written into the arena
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
    ``map_local``: map local files rather than read them into a buffer (requests of 1 MiB or more).
    ``local_reads``: who reads local files when ``nodes`` is None (they are on the driver's
    node): "driver" (default) reads them in the driver's process, as the thread executor does,
    straight into its arrays; "actors" has the read actors on the driver's node do it (see the
    module docstring for what that costs).
    ``shared_memory``: let actors on the driver's node write local files' bytes straight into
    the driver's arrays, allocated in a shared-memory arena in /dev/shm (see the module
    docstring); False, or too little room there, ships every result through the object store.
    ``place_threads``: driver threads copying results into place (default: a quarter of the
    cores, 1 to 4).
    ``startup_timeout``: seconds to wait for the actors to start; those that cannot (no node
    with the resources) are dropped, and if none starts that is an error.
    ``init_kwargs``: call ``ray.init(**init_kwargs)`` when Ray is not initialized (otherwise
    that is an error). The actors are shared with other executors of the same placement and
    stay up until ``close()``; ``start()`` brings them up before the first restore.
    ``stats`` describes the last run.
    """

    def __init__(
        self,
        *,
        num_workers: int | None = None,
        target_task_bytes: int = 32 * 2**20,
        max_tasks_in_flight: int | None = None,
        tasks_per_worker: int = 2,
        threads_per_task: int | None = None,
        nodes: str | Sequence[str] | None = None,
        num_cpus: float = 0,
        resources: Mapping[str, float] | None = None,
        max_retries: int = 3,
        map_local: bool = True,
        local_reads: str = "driver",
        shared_memory: bool = True,
        place_threads: int | None = None,
        startup_timeout: float = 120.0,
        init_kwargs: Mapping | None = None,
    ):
        if target_task_bytes <= 0:
            raise ValueError("target_task_bytes must be positive")
        if tasks_per_worker < 1 or (num_workers is not None and num_workers < 1):
            raise ValueError("num_workers and tasks_per_worker must be at least 1")
        if local_reads not in ("driver", "actors"):
            raise ValueError(f"local_reads must be 'driver' or 'actors', not {local_reads!r}")
        if isinstance(nodes, str) and nodes not in ("local", "spread"):
            raise ValueError(f"nodes must be None, 'local', 'spread' or a list of node ids, not {nodes!r}")
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
        self.local_reads = local_reads
        self._driver = ThreadExecutor()
        self.shared_memory = shared_memory
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
                "or pass RayExecutor(init_kwargs={...}) to let it call ray.init(**init_kwargs)"
            )
        log.info(
            "distrestore: Ray is not initialized; calling ray.init(%s)",
            ", ".join(f"{k}={v!r}" for k, v in self.init_kwargs.items()),
        )
        ray.init(**self.init_kwargs)
        self._started_ray = True

    def start(self, *, local: bool = True, remote: bool = False) -> RayExecutor:
        """Start the read actors now and wait until they are up, so that no restore pays their
        start-up: the pool ``run`` uses for local files (``local``; none when the driver reads
        them) and the one for object stores (``remote``). Returns the executor:
        ``ex = RayExecutor(...).start()``."""
        for is_local, wanted in ((True, local), (False, remote)):
            if wanted and not self._in_driver(is_local):
                self._wait_ready(self._ensure_pool(is_local))
        return self

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
                    except Exception:
                        pass
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
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
                f"num_cpus={self.num_cpus}, resources={self.resources})"
            )
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
        return (
            (ctx.get_node_id(), ctx.get_job_id()),
            where if isinstance(where, str) else tuple(where),
            self.num_workers,
            self.num_cpus,
            tuple(sorted(self.resources.items())),
            self.tasks_per_worker,
            self.max_retries,
        )

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
                    opts = dict(
                        num_cpus=self.num_cpus,
                        max_concurrency=self.tasks_per_worker,
                        max_restarts=self.max_retries,
                        max_task_retries=self.max_retries,
                        # hard affinity: Ray 2.60 does not keep zero-CPU actors on a
                        # soft-affine node (all land on one); a dead node's actors are
                        # dropped at start-up or fail the run, and the pool is rebuilt
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                    )
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
                f"resources={self.resources}): the cluster cannot host them"
            )
        if len(keep) < len(pool.actors):
            log.warning(
                "distrestore: %d of %d Ray read workers did not start within %.0f s; reading with the other %d",
                len(pool.actors) - len(keep),
                len(pool.actors),
                self.startup_timeout,
                len(keep),
            )
        pool.actors, pool.nodes, pool.checked = keep, nodes, True

    def _threads(self, local: bool) -> int:
        return self.threads_per_task or (2 if local else 16)

    def _in_driver(self, local: bool) -> bool:
        return local and self.local_reads == "driver" and self.nodes is None

    def workers_for(self, local: bool) -> int:
        """Concurrent requests: actors x tasks per actor x threads per task. Starts the actor
        pool (without waiting for it), so its start-up overlaps planning."""
        if self._in_driver(local):
            self._ensure_ray()
            return self._driver.workers_for(local)
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

    def run(
        self,
        plan: ReadPlan,
        assembly: Assembly,
        storages: Mapping[str, Storage],
        *,
        max_inflight_bytes: int | None = None,
        progress=None,
    ) -> Iterator[list[int]]:
        self.stats = stats = RayExecutorStats()
        local = all(s.local for s in storages.values())
        if self._in_driver(local):
            self._ensure_ray()
            stats.route = "driver"
            stats.bytes_read = plan.bytes_to_read
            yield from self._driver.run(
                plan, assembly, storages, max_inflight_bytes=max_inflight_bytes, progress=progress
            )
            return
        stats.route = "actors"
        if assembly.ready:
            yield assembly.ready
        if not plan.requests:
            return
        pool = self._ensure_pool(local)
        t0 = time.perf_counter()
        self._wait_ready(pool)
        stats.startup_seconds = time.perf_counter() - t0
        stats.workers, stats.worker_nodes = len(pool.actors), list(pool.nodes)
        actors = pool.actors
        arena, opened = self._open_arena(plan, pool) if local and self.shared_memory else (None, ())
        sharing = set(opened)  # actors that write into the arena (one that restarts drops out)
        budget = max_inflight_bytes or float("inf")
        cap = self._object_store_cap() if len(sharing) < len(actors) else None
        if cap:
            budget = min(budget, cap)
        max_tasks = self.max_tasks_in_flight or len(actors) * (self.tasks_per_worker + 1)
        tasks = list(reversed(self._group(plan, assembly, storages, local, budget)))
        load = [0] * len(actors)
        waiting: dict = {}  # ObjectRef -> (task, nbytes, actor index): submitted, not yet taken
        placing: dict = {}  # Future -> nbytes: results being copied into place
        placer = (
            ThreadPoolExecutor(self.place_threads, thread_name_prefix="distrestore-ray-place")
            if self.place_threads > 1
            else None
        )
        inflight = 0
        try:
            if arena is not None:
                stats.arena_bytes = arena.size
                assembly.allocate = lambda kind, index, nbytes: arena.allocate((kind, index), nbytes)
            while tasks or waiting or placing:
                while (
                    tasks
                    and len(waiting) + len(placing) < max_tasks
                    and (not (waiting or placing) or inflight + _task_bytes(tasks[-1]) <= budget)
                ):
                    task = tasks.pop()
                    nbytes = _task_bytes(task)
                    a = min(range(len(actors)), key=load.__getitem__)  # the least busy actor
                    if arena is not None:
                        task = _bind(task, assembly, arena, a in sharing)
                    waiting[actors[a].read.remote(task)] = (task, nbytes, a)
                    load[a] += 1
                    inflight += nbytes
                    stats.max_inflight_bytes_seen = max(stats.max_inflight_bytes_seen, inflight)
                    stats.max_tasks_in_flight_seen = max(stats.max_tasks_in_flight_seen, len(waiting) + len(placing))
                if waiting and len(placing) < self.place_threads:
                    # completion order; while results are being placed, only look
                    ready, _ = ray.wait(list(waiting), num_returns=1, timeout=0.001 if placing else None)
                    for ref in ready:
                        task, nbytes, a = waiting.pop(ref)
                        load[a] -= 1
                        try:
                            result = self._take(pool, ref, task, assembly)
                        except _ArenaLost:  # the actor was restarted: it ships this task instead
                            sharing.discard(a)
                            tasks.append(task._replace(arena=None))
                            inflight -= nbytes
                            continue
                        del ref
                        if placer is None:
                            finished = self._place(task, result, assembly, arena, progress, stats)
                            del result  # releases the object store copy
                            inflight -= nbytes
                            if finished:
                                yield finished
                        else:
                            placing[placer.submit(self._place, task, result, assembly, arena, progress, stats)] = nbytes
                            del result
                if placing:
                    block = not waiting or len(placing) >= self.place_threads
                    done, _ = futures_wait(placing, timeout=None if block else 0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        inflight -= placing.pop(fut)
                        finished = fut.result()  # re-raises ChecksumMismatchError
                        if finished:
                            yield finished
        finally:
            for ref in waiting:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            if placer is not None:
                placer.shutdown(wait=True, cancel_futures=True)
            if arena is not None:
                assembly.allocate = None
                # the actors close it once their running tasks are done; until then the arena's
                # memory stays with them (waiting makes its release certain when run returns)
                try:
                    closing = [actors[i].close_arena.remote(arena.path) for i in opened]
                    ray.wait(closing, num_returns=len(closing), timeout=10)
                except Exception:
                    pass

    def _open_arena(self, plan: ReadPlan, pool: _Pool) -> tuple[Arena | None, list[int]]:
        """A shared-memory arena for the plan's buffers, and the actors that opened it: those on
        the driver's node by Ray node id (others, even on this machine, ship their results).
        None where there is no room or no such actor, or in a Ray Client session (the driver's
        memory is on another machine than the node it names)."""
        here = ray.get_runtime_context().get_node_id()
        mine = [i for i, node in enumerate(pool.nodes) if node == here]
        if not mine or ray.util.client.ray.is_connected():
            return None, []
        sizes, reserve = _arena_layout(plan)
        arena = Arena.create(sizes)
        if arena is None:
            log.info(
                "distrestore: too little room in /dev/shm for a %d-byte arena; results go through the object store",
                sum(sizes.values()),
            )
            return None, []
        try:
            arena.reserve(reserve)
            refs = [pool.actors[i].open_arena.remote(arena.path) for i in mine]
            ray.wait(refs, num_returns=len(refs), timeout=self.startup_timeout)
            opened = []
            for i, ref in zip(mine, refs):
                try:
                    if ray.get(ref, timeout=0):
                        opened.append(i)
                except ray.exceptions.RayError:  # not up or gone: it ships its results
                    pass
        except OSError as e:  # the room went before it was reserved
            log.info("distrestore: no shared-memory arena (%s); results go through the object store", e)
            return None, []
        finally:
            arena.unlink()  # every writer has it open: from here no crash can leave it behind
        return (arena, opened) if opened else (None, [])

    def _take(self, pool: _Pool, ref, task: _Task, assembly: Assembly) -> _Result:
        try:
            return _get(ref, task, assembly)
        except ReadWorkerLostError:
            with _POOLS_LOCK:  # the next run starts a new pool where nodes are alive
                if _POOLS.get(pool.key) is pool:
                    del _POOLS[pool.key]
            raise

    def _group(
        self, plan: ReadPlan, assembly: Assembly, storages: Mapping[str, Storage], local: bool, budget: float
    ) -> list[_Task]:
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
                for i, s in enumerate(st_list):  # noqa: B007 - i is used after the loop
                    if s is st:
                        break
                else:
                    i = len(st_list)
                    st_list.append(st)
                st_ids.append(i)
                # actors run in another directory (or on another node): absolute paths
                reqs.append(r._replace(file=os.path.abspath(r.file)) if st.local and "://" not in r.file else r)
            checks = tuple(tuple(s.entry >= 0 and check[s.entry] for s in r.segments) for r in cur)
            out.append(_Task(tuple(st_list), tuple(reqs), tuple(st_ids), checks, threads, self.map_local))
            cur.clear()

        for req in plan.requests:
            if cur and size + req.nbytes > limit:
                flush()
                size = 0
            cur.append(req)
            size += req.nbytes
        flush()
        return out

    def _place(
        self, task: _Task, result: _Result, assembly: Assembly, arena: Arena | None, progress, stats: RayExecutorStats
    ) -> list[int]:
        t0 = time.perf_counter()
        finished: list[int] = []
        shipped = 0
        for i, (req, crcs) in enumerate(zip(task.requests, result.crcs)):
            if result.parts is None:
                pass  # the actor wrote the bytes into the arena
            elif task.dests is None:
                shipped += _place_parts(assembly, req, result.parts[i])
            else:
                shipped += _write_parts(arena, req, result.parts[i], task.dests[i])
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
            if result.parts is None:
                stats.bytes_shared += sum(s.length for r in task.requests for s in r.segments if s.kind != SKIP)
            stats.worker_seconds += result.seconds
            stats.bytes_by_node[result.node_id] = stats.bytes_by_node.get(result.node_id, 0) + nbytes
            stats.tasks_by_node[result.node_id] = stats.tasks_by_node.get(result.node_id, 0) + 1
        return finished


def _shipped(req: ReadRequest, parts: Sequence[np.ndarray]) -> Iterator[tuple[int, memoryview]]:
    """(segment index, its bytes) of every needed segment of a request, from ``parts`` (what an
    actor ships: runs of whole segments, in order)."""
    it = iter(parts)
    src = memoryview(b"")
    pos = 0
    for k, seg in enumerate(req.segments):
        if seg.kind == SKIP:
            continue
        if pos == src.nbytes:
            src = memoryview(next(it)).cast("B")
            pos = 0
        yield k, src[pos : pos + seg.length]
        pos += seg.length


def _place_parts(assembly: Assembly, req: ReadRequest, parts: Sequence[np.ndarray]) -> int:
    """Copy a request's needed bytes from the object store into the assembly's buffers: the one
    copy on the driver. Big segments are copied by numpy, which releases the GIL, so several
    placing threads run in parallel. Returns the bytes shipped."""
    views = assembly.buffers(req)
    for k, src in _shipped(req, parts):
        if src.nbytes >= _NUMPY_COPY_BYTES:
            np.copyto(np.frombuffer(views[k], np.uint8), np.frombuffer(src, np.uint8))
        else:
            views[k][:] = src
    return sum(memoryview(p).nbytes for p in parts)


def _write_parts(arena: Arena, req: ReadRequest, parts: Sequence[np.ndarray], dests: Sequence[int]) -> int:
    """Write a request's shipped bytes into its buffers in the arena, through the file (see
    ``Arena.reserve`` for why not through the mapping). Returns the bytes shipped."""
    for k, src in _shipped(req, parts):
        arena.write(dests[k], src)
    return sum(memoryview(p).nbytes for p in parts)


def _bind(task: _Task, assembly: Assembly, arena: Arena, shared: bool) -> _Task:
    """The task with the arena offset of every needed segment, its buffers allocated there; for
    an actor that has the arena open (``shared``), also the arena to write into."""
    dests = []
    for req in task.requests:
        assembly.buffers(req)  # allocates them, through ``Assembly.allocate``
        dests.append(
            tuple(-1 if s.kind == SKIP else arena.offsets[(s.kind, s.target)] + s.offset for s in req.segments)
        )
    return task._replace(arena=arena.path if shared else None, dests=tuple(dests))


def _arena_layout(plan: ReadPlan) -> tuple[dict[tuple[int, int], int], list[tuple[int, int]]]:
    """The bytes of every buffer reads land in, keyed as ``Assembly.allocate`` asks for them:
    outputs written by DIRECT segments, staging and packed buffers; and those of them the driver
    writes into as well (outputs that staged bytes are also copied into)."""
    sizes: dict[tuple[int, int], int] = {}
    for req in plan.requests:
        for seg in req.segments:
            if seg.kind == DIRECT and (DIRECT, seg.target) not in sizes:
                out = plan.outputs[seg.target]
                sizes[(DIRECT, seg.target)] = dtypes.BY_NAME[out.dtype].itemsize * math.prod(out.shape)
    sizes.update(((STAGED, i), st.size) for i, st in enumerate(plan.staging))
    sizes.update(((PACKED, i), p.size) for i, p in enumerate(plan.packed))
    copied = {c.output for st in plan.staging for c in st.copies}
    return sizes, [k for k in sizes if k[0] == DIRECT and k[1] in copied]


def _task_bytes(task: _Task) -> int:
    return sum(r.nbytes for r in task.requests)


def _where(task: _Task, assembly: Assembly, index: int | None) -> str:
    req = task.requests[index if index is not None else 0]
    more = "" if index is not None or len(task.requests) == 1 else f" and {len(task.requests) - 1} more ranges"
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
        if isinstance(cause, (DistRestoreError, _ArenaLost)):
            raise cause from e
        raise
    except ray.exceptions.RayError as e:  # the actor (or its node) died past its restarts
        raise ReadWorkerLostError(
            f"a Ray read worker failed while reading {_where(task, assembly, None)}: {type(e).__name__}: {e}"
        ) from e


# -- the actor side ----------------------------------------------------------------------------


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

    def use_arena(self, path: str) -> int:
        with self.lock:
            a = self.arenas.get(path)
            if a is None or a[2]:
                raise _ArenaLost(path)
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
    return storage._call(req.file, (req.start, req.end), do)


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
        if map_local and req.nbytes >= _MAP_MIN_BYTES:
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


def _read(state: _WorkerState, task: _Task) -> _Result:
    t0 = time.perf_counter()
    storages = [state.storage(s) for s in task.storages]
    node = ray.get_runtime_context().get_node_id()
    if task.arena is not None:
        fd = state.use_arena(task.arena)
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
        return _Result(None, crcs, node, time.perf_counter() - t0)
    mapped = [
        task.map_local and storages[i].local and r.nbytes >= _MAP_MIN_BYTES
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
    return _Result([p for p, _ in results], [c for _, c in results], node, time.perf_counter() - t0)


class _ReadWorker:
    """A read actor: runs tasks (``tasks_per_worker`` at once, in threads) with its state."""

    def __init__(self):
        self.state = _WorkerState()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def read(self, task: _Task) -> _Result:
        return _read(self.state, task)

    def open_arena(self, path: str) -> bool:
        """Open a driver's arena for the tasks of its run; False where it is not visible here."""
        return self.state.open_arena(path)

    def close_arena(self, path: str) -> None:
        self.state.done_arena(path, close=True)


_ReadActor = ray.remote(_ReadWorker)
