"""The Ray executor: a plan's reads run on a pool of Ray read actors (local files: in the driver).

The driver groups the plan's requests into tasks of tens of MB and sends each task as a small
descriptor to a read actor (``worker.py``), which reads storage itself and checksums while the
bytes are hot. Results come back through the object store, or, for actors on the driver's node,
straight into the driver's arrays through a shared-memory arena (``shm.py``; the arrays live there
because ``allocator`` says so when the read sink is made). The driver waits in completion order,
places what came back (``placing.py``), reports each request to the read sink, which checks the
CRCs, and yields the outputs that completed, in batches. A bounded number of
tasks and bytes is in flight: a task's bytes count from submit until its result is placed, and
results that travel through the object store never exceed half the driver node's object store.

Local files are read by the driver itself by default (``local_reads="driver"``): any other
process on the node must hand the bytes over across a process boundary, which costs more than
it saves. Why, and what each route was measured to cost: ``docs/ray-executor.md``.

Ray must already be initialized: this module never calls ``ray.init`` with Ray's defaults behind
the caller's back (they start a local cluster sized to the whole machine, or join whatever
``RAY_ADDRESS`` names). Pass ``init_kwargs`` to let the executor call ``ray.init(**init_kwargs)``
itself; it logs that it did, and ``close()`` shuts that Ray down again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

import ray

from ..errors import DeadlineExceededError, RayNotInitializedError, ReadWorkerLostError
from ..execute.sink import Allocator, ReadSink
from ..execute.threads import GRACE, ThreadExecutor
from ..readplan import SKIP, ReadPlan
from ..storage import Storage
from . import pool as pools
from .placing import bind, close_arena, open_arena, place_parts, task_bytes, write_parts
from .shm import Arena
from .tasks import get_result, group_tasks, overdue
from .worker import ReadResult, ReadTask

log = logging.getLogger("distrestore")

__all__ = ["RayExecutor", "RayExecutorStats"]


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


class RayExecutor:
    """Run a plan's reads on a pool of Ray actors (``docs/ray-executor.md`` says why actors).

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
    straight into its arrays; "actors" has the read actors on the driver's node do it.
    ``shared_memory``: let actors on the driver's node write local files' bytes straight into
    the driver's arrays, allocated in a shared-memory arena in /dev/shm; False, or too little
    room there, ships every result through the object store.
    ``place_threads``: driver threads copying results into place (default: a quarter of the
    cores, 1 to 4).
    ``startup_timeout``: seconds to wait for the actors to start; those that cannot (no node
    with the resources) are dropped, and if none starts that is an error.
    ``init_kwargs``: call ``ray.init(**init_kwargs)`` when Ray is not initialized (otherwise
    that is an error). The actors are started by the first ``run`` (or by ``start()``, before
    any restore), shared with other executors of the same placement, and stay up until
    ``close()``. Planning never starts them: ``workers_for`` only asks Ray which nodes are alive.
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
        self.pool_keys: set = set()  # the shared pools (``pool.POOLS`` keys) this executor used
        self._started_ray = False
        self._prepared: tuple | None = None  # (plan, pool, arena, actors that opened it): allocator's

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
                pool = self._ensure_pool(is_local)
                pools.POOLS.wait_ready(pool, self.startup_timeout, self._spec(is_local))
        return self

    def close(self) -> None:
        """Kill the read actors this executor used (also for other executors that share them),
        and shut down the Ray this executor started (``init_kwargs``)."""
        self._prepared = None
        pools.POOLS.close(list(self.pool_keys))
        self.pool_keys.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, local: bool) -> pools.PoolSpec:
        where = self.nodes if self.nodes is not None else ("local" if local else "spread")
        return pools.PoolSpec(
            where if isinstance(where, str) else tuple(where),
            self.num_workers,
            self.num_cpus,
            tuple(sorted(self.resources.items())),
            self.tasks_per_worker,
            self.max_retries,
        )

    def _ensure_pool(self, local: bool) -> pools.Pool:
        self._ensure_ray()
        pool = pools.POOLS.ensure(self._spec(local))
        self.pool_keys.add(pool.key)
        return pool

    def _threads(self, local: bool) -> int:
        return self.threads_per_task or (2 if local else 16)

    def _in_driver(self, local: bool) -> bool:
        return local and self.local_reads == "driver" and self.nodes is None

    def workers_for(self, local: bool) -> int:
        """Concurrent requests: actors x tasks per actor x threads per task. A cheap query for
        planning: it starts nothing (not even Ray); without Ray it assumes this machine's CPUs."""
        if self._in_driver(local):
            return self._driver.workers_for(local)
        if ray.is_initialized():
            actors = len(pools.layout(self._spec(local)))
        else:
            actors = self.num_workers or min(pools.MAX_WORKERS, os.cpu_count() or 2)
        return actors * self.tasks_per_worker * self._threads(local)

    def object_store_cap(self) -> int | None:
        """Half the object store of the driver's node: the most bytes results in flight through
        the object store may hold (None when Ray does not say)."""
        here = ray.get_runtime_context().get_node_id()
        for n in ray.nodes():
            if n.get("Alive") and n["NodeID"] == here:
                store = n.get("Resources", {}).get("object_store_memory")
                return int(store // 2) if store else None
        return None

    # -- running -------------------------------------------------------------------------------

    def allocator(self, plan: ReadPlan, storages: Mapping[str, Storage]) -> Allocator | None:
        """Where the plan's buffers should live (asked once per run, before the read sink is
        made): in a shared-memory arena that the read actors on the driver's node write into,
        for local files read by actors; None (numpy memory) otherwise. Starts the actors."""
        self._release_prepared()
        local = all(s.local for s in storages.values())
        if not (local and self.shared_memory and plan.requests) or self._in_driver(local):
            return None
        pool = self._ensure_pool(local)
        pools.POOLS.wait_ready(pool, self.startup_timeout, self._spec(local))
        arena, opened = open_arena(plan, pool, self.startup_timeout)
        if arena is None:
            return None
        self._prepared = (plan, pool, arena, opened)
        return lambda kind, index, nbytes: arena.allocate((kind, index), nbytes)

    def _release_prepared(self) -> None:
        """Close an arena made for a run that never came (its actors keep it open until then)."""
        if self._prepared is not None:
            _, pool, arena, opened = self._prepared
            self._prepared = None
            close_arena(pool, arena, opened)

    def run(
        self,
        plan: ReadPlan,
        sink: ReadSink,
        storages: Mapping[str, Storage],
        *,
        max_inflight_bytes: int | None = None,
        progress=None,
    ) -> Iterator[list[int]]:
        self.stats = stats = RayExecutorStats()
        local = all(s.local for s in storages.values())
        self._ensure_ray()
        if self._in_driver(local):
            stats.route = "driver"
            stats.bytes_read = plan.bytes_to_read
            yield from self._driver.run(plan, sink, storages, max_inflight_bytes=max_inflight_bytes, progress=progress)
            return
        stats.route = "actors"
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is not plan:  # made for another plan
            close_arena(*prepared[1:])
            prepared = None
        if sink.ready:
            yield sink.ready
        if not plan.requests:
            return
        pool = self._ensure_pool(local) if prepared is None else prepared[1]
        deadline = min((s.deadline_at for s in storages.values() if s.deadline_at is not None), default=None)
        t0 = time.perf_counter()
        if deadline is not None and not pools.POOLS.started_within(pool, deadline + GRACE - time.time()):
            if prepared is not None:
                close_arena(*prepared[1:])
            raise DeadlineExceededError(
                f"the deadline passed while the Ray read workers were starting ({len(plan.requests)} reads not begun)"
            )
        pools.POOLS.wait_ready(pool, self.startup_timeout, self._spec(local))
        stats.startup_seconds = time.perf_counter() - t0
        stats.workers, stats.worker_nodes = len(pool.actors), list(pool.nodes)
        actors = pool.actors
        arena, opened = (None, ()) if prepared is None else prepared[2:]
        sharing = set(opened)  # actors that write into the arena (one that restarts drops out)
        budget = max_inflight_bytes or float("inf")
        cap = self.object_store_cap() if len(sharing) < len(actors) else None
        if cap:
            budget = min(budget, cap)
        max_tasks = self.max_tasks_in_flight or len(actors) * (self.tasks_per_worker + 1)
        limit = min(self.target_task_bytes, budget)
        tasks = list(reversed(group_tasks(plan, sink, storages, limit, self._threads(local), self.map_local)))
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
            while tasks or waiting or placing:
                while (
                    tasks
                    and len(waiting) + len(placing) < max_tasks
                    and (not (waiting or placing) or inflight + task_bytes(tasks[-1]) <= budget)
                ):
                    task = tasks.pop()
                    nbytes = task_bytes(task)
                    a = min(range(len(actors)), key=load.__getitem__)  # the least busy actor
                    if arena is not None:
                        task = bind(task, sink, arena, a in sharing)
                    waiting[actors[a].read.remote(task)] = (task, nbytes, a)
                    load[a] += 1
                    inflight += nbytes
                    stats.max_inflight_bytes_seen = max(stats.max_inflight_bytes_seen, inflight)
                    stats.max_tasks_in_flight_seen = max(stats.max_tasks_in_flight_seen, len(waiting) + len(placing))
                if waiting and len(placing) < self.place_threads:
                    # completion order; while results are being placed, only look; never past
                    # the call's deadline (a read the storage cannot cut, as a stuck local read)
                    timeout = 0.001 if placing else None
                    if deadline is not None and not placing:
                        timeout = max(0.0, deadline + GRACE - time.time())
                    ready, _ = ray.wait(list(waiting), num_returns=1, timeout=timeout)
                    if not ready and not placing and deadline is not None and time.time() >= deadline + GRACE:
                        raise overdue([t for t, _, _ in waiting.values()], sink)
                    for ref in ready:
                        task, nbytes, a = waiting.pop(ref)
                        load[a] -= 1
                        result = self._take(pool, ref, task, sink)
                        if result.arena_lost:  # the actor was restarted: it ships this task instead
                            sharing.discard(a)
                            tasks.append(task._replace(arena=None))
                            inflight -= nbytes
                            continue
                        del ref
                        if placer is None:
                            finished = self._place(task, result, sink, arena, progress, stats)
                            del result  # releases the object store copy
                            inflight -= nbytes
                            if finished:
                                yield finished
                        else:
                            placing[placer.submit(self._place, task, result, sink, arena, progress, stats)] = nbytes
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
                close_arena(pool, arena, opened)

    def _take(self, pool: pools.Pool, ref, task: ReadTask, sink: ReadSink) -> ReadResult:
        try:
            return get_result(ref, task, sink)
        except ReadWorkerLostError:
            pools.POOLS.drop(pool)  # the next run starts a new pool where nodes are alive
            raise

    def _place(
        self,
        task: ReadTask,
        result: ReadResult,
        sink: ReadSink,
        arena: Arena | None,
        progress,
        stats: RayExecutorStats,
    ) -> list[int]:
        t0 = time.perf_counter()
        finished: list[int] = []
        shipped = 0
        for i, (req, crcs) in enumerate(zip(task.requests, result.crcs)):
            if result.parts is None:
                pass  # the actor wrote the bytes into the arena
            elif task.dests is None:
                shipped += place_parts(sink, req, result.parts[i])
            else:
                shipped += write_parts(arena, req, result.parts[i], task.dests[i])
            done = sink.complete(req, crcs)  # raises ChecksumMismatchError
            if progress is not None:
                progress.advance(req.nbytes, len(done))
            finished.extend(done)
        nbytes = task_bytes(task)
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
