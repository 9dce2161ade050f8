"""The Ray executor's read actors: where they go, and one shared pool per placement.

Starting read actors costs about a second, which a restore of a few GB must not pay each time,
so a pool is shared by every ``RayExecutor`` with the same placement options in one Ray session
(``POOLS``) and lives until an executor that used it is closed. ``layout`` decides how many
actors go on which node; it only asks Ray which nodes are alive, so it is cheap enough to size a
plan with (``RayExecutor.workers_for``) without starting anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import RayPlacementError
from .worker import ReadActor

log = logging.getLogger("distrestore")

MAX_WORKERS_PER_NODE = 8
MAX_WORKERS = 64


@dataclass(frozen=True)
class PoolSpec:
    """What makes two pools the same: placement and what each actor reserves and runs."""

    where: str | tuple[str, ...]  # "local", "spread" or node ids
    num_workers: int | None
    num_cpus: float
    resources: tuple[tuple[str, float], ...]
    tasks_per_worker: int
    max_retries: int


def layout(spec: PoolSpec) -> list[str]:
    """The node of every actor of the pool: up to one per CPU of each node (at least one on the
    driver's node or a named node; none on CPU-less nodes when spreading, the way head nodes are
    kept free), as many as ``num_cpus``/``resources`` let fit."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if spec.where == "local":
        here = ray.get_runtime_context().get_node_id()
        nodes = [n for n in alive if n["NodeID"] == here]
    elif spec.where == "spread":
        nodes = [n for n in alive if n.get("Resources", {}).get("CPU", 0) > 0] or alive
    else:
        by_id = {n["NodeID"]: n for n in alive}
        missing = [i for i in spec.where if i not in by_id]
        if missing:
            raise ValueError(f"RayExecutor(nodes=...): no alive Ray node has id {missing[0]!r}")
        nodes = [by_id[i] for i in dict.fromkeys(spec.where)]
    capacity = []
    for n in nodes:
        res = n.get("Resources", {})
        k = max(1, min(int(res.get("CPU", 0)), MAX_WORKERS_PER_NODE))
        if spec.num_cpus > 0:
            k = min(k, int(res.get("CPU", 0) // spec.num_cpus))
        for name, need in spec.resources:
            if need > 0:
                k = min(k, int(res.get(name, 0) // need))
        if k > 0:
            capacity.append((n["NodeID"], k))
    if not capacity:
        raise RayPlacementError(
            f"no Ray node can host a read worker for this restore (placement {spec.where!r}, "
            f"num_cpus={spec.num_cpus}, resources={dict(spec.resources)})"
        )
    want = spec.num_workers or min(MAX_WORKERS, sum(k for _, k in capacity))
    nodes_of: list[str] = []
    while len(nodes_of) < want:  # round-robin, so every node gets some before any gets many
        for node, k in capacity:
            if len(nodes_of) < want and (spec.num_workers or nodes_of.count(node) < k):
                nodes_of.append(node)
    return nodes_of


@dataclass
class Pool:
    """Read actors of one placement in one Ray session, and the node each one runs on."""

    key: tuple
    actors: list
    nodes: list[str]
    ready: list = field(default_factory=list)
    checked: bool = False  # every actor was waited for (those that did not start are dropped)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PoolRegistry:
    """The pools of this process's Ray session, by key (``session`` + ``PoolSpec``)."""

    def __init__(self):
        self._pools: dict[tuple, Pool] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(spec: PoolSpec) -> tuple:
        ctx = ray.get_runtime_context()
        return ((ctx.get_node_id(), ctx.get_job_id()), spec)

    def get(self, key: tuple) -> Pool | None:
        return self._pools.get(key)

    def __contains__(self, key: tuple) -> bool:
        return key in self._pools

    def keys(self) -> list[tuple]:
        return list(self._pools)

    def ensure(self, spec: PoolSpec) -> Pool:
        """The pool for ``spec``, its actors requested now if it has none (not waited for)."""
        key = self.key(spec)
        with self._lock:
            for k in [k for k in self._pools if k[0] != key[0]]:
                del self._pools[k]  # from an earlier Ray session: its actors are gone
            pool = self._pools.get(key)
            if pool is None:
                nodes = layout(spec)
                actors = [_start_actor(spec, node) for node in nodes]
                pool = self._pools[key] = Pool(key, actors, nodes, [a.node_id.remote() for a in actors])
        return pool

    def drop(self, pool: Pool) -> None:
        """Forget a pool (the next ``ensure`` builds a new one), if it is still the registered one."""
        with self._lock:
            if self._pools.get(pool.key) is pool:
                del self._pools[pool.key]

    def close(self, keys: Sequence[tuple]) -> None:
        """Forget these pools and kill their actors."""
        with self._lock:
            pools = [self._pools.pop(k) for k in keys if k in self._pools]
        if ray.is_initialized():
            for pool in pools:
                for a in pool.actors:
                    try:
                        ray.kill(a)
                    except Exception:
                        pass

    def wait_ready(self, pool: Pool, timeout: float, spec: PoolSpec) -> None:
        """Wait (once per pool) until its actors are up; drop those that did not start in time."""
        with pool.lock:
            if not pool.checked:
                self._check_started(pool, timeout, spec)

    def started_within(self, pool: Pool, timeout: float) -> bool:
        """Whether every actor of the pool is up, waiting at most ``timeout`` seconds; unlike
        ``wait_ready`` it drops none (a call's deadline is not the pool's start-up limit)."""
        if pool.checked:
            return True
        _, pending = ray.wait(list(pool.ready), num_returns=len(pool.ready), timeout=max(0.0, timeout))
        return not pending

    def _check_started(self, pool: Pool, timeout: float, spec: PoolSpec) -> None:
        _, pending = ray.wait(pool.ready, num_returns=len(pool.ready), timeout=timeout)
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
            self.drop(pool)
            raise RayPlacementError(
                f"none of the {len(pool.actors)} Ray read workers started within "
                f"{timeout:.0f} s (num_cpus={spec.num_cpus}, "
                f"resources={dict(spec.resources)}): the cluster cannot host them"
            )
        if len(keep) < len(pool.actors):
            log.warning(
                "distrestore: %d of %d Ray read workers did not start within %.0f s; reading with the other %d",
                len(pool.actors) - len(keep),
                len(pool.actors),
                timeout,
                len(keep),
            )
        pool.actors, pool.nodes, pool.checked = keep, nodes, True


def _start_actor(spec: PoolSpec, node: str):
    opts = dict(
        num_cpus=spec.num_cpus,
        max_concurrency=spec.tasks_per_worker,
        max_restarts=spec.max_retries,
        max_task_retries=spec.max_retries,
        # hard affinity: Ray 2.60 does not keep zero-CPU actors on a soft-affine node (all land
        # on one); a dead node's actors are dropped at start-up or fail the run, and the pool
        # is rebuilt
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    )
    if spec.resources:
        opts["resources"] = dict(spec.resources)
    return ReadActor.options(**opts).remote()


# Read actors, shared by executors with the same placement in one Ray session.
POOLS = PoolRegistry()
