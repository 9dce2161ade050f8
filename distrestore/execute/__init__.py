"""Executors run a ``ReadPlan``: the thread executor (default) and the Ray executor.

An executor reads every request of a plan into the buffers a :class:`~.sink.ReadSink` gives it,
keeps at most ``max_inflight_bytes`` of requests outstanding, and yields batches of output
indices as they complete (a packed group completes thousands at once).
The Ray executor lives in ``distrestore.ray`` (the only package that imports ray).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from ..readplan import ReadPlan
from ..storage import Storage
from .sink import Allocator, ReadSink

__all__ = ["Allocator", "Executor", "ReadSink", "get_executor"]


class Executor(Protocol):
    """Runs plans. Optionally also ``allocator(plan, storages) -> Allocator | None``: where the
    plan's buffers should live (asked once per run, after planning, before the sink is made)."""

    def workers_for(self, local: bool) -> int:
        """How many requests this executor runs at once for local or remote storage. Planning
        asks this: it must be cheap and start nothing (no processes, actors or connections)."""

    def run(
        self,
        plan: ReadPlan,
        sink: ReadSink,
        storages: Mapping[str, Storage],
        *,
        max_inflight_bytes: int | None = None,
        progress=None,
    ) -> Iterator[list[int]]:
        """Read the plan; yield lists of output indices as they complete (each index once;
        a bare int is accepted too)."""


def get_executor(executor) -> Executor:
    if executor is None or executor == "threads":
        from .threads import ThreadExecutor

        return ThreadExecutor()
    if executor == "ray":
        from ..ray.executor import RayExecutor

        return RayExecutor()
    if isinstance(executor, str):
        raise ValueError(f"unknown executor {executor!r}; use 'threads', 'ray' or an Executor")
    return executor
