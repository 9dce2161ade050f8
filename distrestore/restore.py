"""Parallel restore of raw tensors: ``fetch`` (regions, many checkpoints, one plan) and
``restore_tensors`` (a checkpoint's tensors by name), each with a streaming form.

Every call plans all its reads at once, so many tensors, regions and checkpoints are read
together, each byte once, and nothing is returned unless every read and checksum succeeded.
Every reading call takes ``timeout=`` (seconds a request may stall before it is abandoned and
retried) and ``deadline=`` (seconds for the whole call; for the streaming forms, from the first item asked
for to the last, the consumer's time included): see ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ._gc import gc_paused
from .assemble import Assembly
from .execute import Executor, get_executor
from .execute.threads import ThreadExecutor
from .format import dtypes
from .index import CheckpointIndex, open_index, usual_data_file
from .plan import PlanOptions, ReadPlan, Wants, build_plan
from .progress import make_progress
from .storage import Storage, deadline_at
from .storage.early import EarlyRead


class TensorRequest(NamedTuple):
    """A wanted tensor, or a region of it (a tuple of step-1 slices in the full tensor's
    coordinates; None means the whole tensor). Partitioned tensors are assembled transparently.
    (Immutable; a NamedTuple because restores make one per tensor, 10^5 of them at times.)"""

    checkpoint: CheckpointIndex
    name: str
    region: tuple | None = None


def time_limits(timeout: float | None, deadline: float | None) -> dict:
    """The ``timeout=``/``deadline=`` keywords that were given, for passing on to a fetch
    function (one that predates them is called without them when they are not used)."""
    limits = {}
    if timeout is not None:
        limits["timeout"] = timeout
    if deadline is not None:
        limits["deadline"] = deadline
    return limits


def left_of(timeout: float | None, at: float | None) -> dict:
    """The ``timeout=``/``deadline=`` keywords for the next step of a call whose deadline is the
    wall-clock time ``at`` (``deadline``: what is left of it; none when there is no deadline)."""
    return time_limits(timeout, None if at is None else max(0.0, at - time.time()))


def plan_requests(
    requests: Sequence[TensorRequest] | Wants,
    executor: Executor | str = "threads",
    max_inflight_bytes: int | None = None,
    *,
    verify: bool = True,
) -> ReadPlan:
    """The ``ReadPlan`` a fetch of these requests would run (for inspection: ``print(plan)``);
    ``verify`` as the fetch's (with it, regions read the rest of the stored entries they touch).

    Side-effect free: the executor is asked only how many requests it runs at once
    (``workers_for``), which starts nothing."""
    executor = get_executor(executor)
    wants = Wants.of(requests)
    local = all(c.storage.local for c in wants.distinct_checkpoints())
    options = PlanOptions.for_storage(local, executor.workers_for(local), max_inflight_bytes, verify=verify)
    with gc_paused():
        return build_plan(wants, options)


class _Run:
    """One plan, its executor, storages and assembly; ``batches()`` runs it. The storages carry
    the call's limits (``timeout``; ``at``: the deadline as a wall-clock time) to the executor."""

    def __init__(self, wants: Wants, executor, verify: bool, max_inflight_bytes, progress, timeout=None, at=None):
        self.executor = get_executor(executor)
        self.storages = {}
        views = {}  # each index read through its storage with the call's limits (planning asks sizes)
        for index in wants.distinct_checkpoints():
            storage = index.storage.limited(timeout=timeout, deadline_at=at)
            self.storages.update((f, storage) for f in index.data_files())
            if storage is not index.storage:
                views[id(index)] = index.with_storage(storage)
        if views:
            wants = Wants([views.get(id(c), c) for c in wants.checkpoints], wants.names, wants.regions)
        with gc_paused():  # the plan and the assembly's bookkeeping: 10^5 objects at once (see _gc)
            self.plan = plan_requests(wants, self.executor, max_inflight_bytes, verify=verify)
            allocator = getattr(self.executor, "allocator", None)  # optional: see Executor
            allocate = allocator(self.plan, self.storages) if allocator is not None else None
            self.assembly = Assembly(self.plan, verify=verify, names=wants.names, allocate=allocate)
        self.max_inflight_bytes = max_inflight_bytes
        self.progress = progress

    def batches(self) -> Iterator[list[int]]:
        """Lists of output indices, as they complete."""
        prog = make_progress(self.progress, self.plan.bytes_to_read, len(self.plan.outputs))
        try:
            for batch in self.executor.run(
                self.plan, self.assembly, self.storages, max_inflight_bytes=self.max_inflight_bytes, progress=prog
            ):
                yield (batch,) if isinstance(batch, int) else batch
        finally:
            if prog is not None:
                prog.close()


def iter_fetch(
    requests: Sequence[TensorRequest],
    *,
    executor: Executor | str = "threads",
    verify: bool = True,
    max_inflight_bytes: int | None = None,
    progress=None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(request index, array)`` as each request's array completes.

    At most ``max_inflight_bytes`` of reads are outstanding; arrays are allocated when their
    first read starts and forgotten once yielded, so a consumer that drops them restores a
    checkpoint larger than memory (peak: the budget plus the tensors being assembled).
    """
    yield from _iter_fetch(
        Wants.of(requests), executor, verify, max_inflight_bytes, progress, timeout, deadline_at(deadline)
    )


def _iter_fetch(wants: Wants, executor, verify, max_inflight_bytes, progress, timeout, at):
    run = _Run(wants, executor, verify, max_inflight_bytes, progress, timeout, at)
    for batch in run.batches():
        for i in batch:
            yield i, run.assembly.take(i)


def _fetch_all(wants: Wants, executor, verify, max_inflight_bytes, progress, timeout, at) -> list[np.ndarray]:
    """Run one plan to completion and hand over every output (no per-tensor bookkeeping)."""
    run = _Run(wants, executor, verify, max_inflight_bytes, progress, timeout, at)
    for _ in run.batches():
        pass
    return run.assembly.take_all()


def fetch(
    requests: Sequence[TensorRequest],
    *,
    executor: Executor | str = "threads",
    verify: bool = True,
    max_inflight_bytes: int | None = None,
    progress=None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> list[np.ndarray]:
    """Read every request as one parallel plan; arrays in request order, or an error and nothing.
    Identical requests are read once (later ones get copies)."""
    return _fetch(Wants.of(requests), executor, verify, max_inflight_bytes, progress, timeout, deadline_at(deadline))


def _fetch(wants: Wants, executor, verify, max_inflight_bytes, progress, timeout, at, unique=False) -> list[np.ndarray]:
    """``unique``: the wants are known to be distinct (every tensor of one index), so the check
    for repeats (a set of 10^5 names) is skipped."""
    if unique:
        return _fetch_all(wants, executor, verify, max_inflight_bytes, progress, timeout, at)
    single = len(wants.distinct_checkpoints()) == 1
    if single and wants.all_whole():
        keys = wants.names
    else:
        keys = list(zip(map(id, wants.checkpoints), wants.names, map(_region_key, wants.regions)))
    if len(set(keys)) == len(keys):
        return _fetch_all(wants, executor, verify, max_inflight_bytes, progress, timeout, at)
    first: dict[tuple, int] = {}
    unique = Wants([], [], [])
    source = []
    for i, key in enumerate(keys):
        if key not in first:
            first[key] = len(unique.names)
            unique.checkpoints.append(wants.checkpoints[i])
            unique.names.append(wants.names[i])
            unique.regions.append(wants.regions[i])
        source.append(first[key])
    got = _fetch_all(unique, executor, verify, max_inflight_bytes, progress, timeout, at)
    out, used = [], set()
    for j in source:
        out.append(got[j] if j not in used else got[j].copy())
        used.add(j)
    return out


def _region_key(region):
    if region is None:
        return None
    if not isinstance(region, tuple):
        region = (region,)
    return tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in region)


def _wants(ckpt_dir_or_file, names, storage_options, timeout, at, head=False) -> tuple[Wants, EarlyRead | None]:
    """The wants, and with ``head`` the GET for the head of the usual data file, begun before the
    index GET (a restore of every tensor reads all of it; the caller discards it when done)."""
    early = _begin_head(ckpt_dir_or_file, storage_options, timeout) if head else None
    try:
        index = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=at)
    except BaseException:
        if early is not None:
            early.discard()
        raise
    if early is not None and index.data_files() == [early.url]:
        index = index.with_storage(index.storage.serving(early))
    if names is None:
        cols = index.columns()
        variant = cols.dtype == dtypes.VARIANT
        names = [cols.names[i] for i in np.flatnonzero(~variant).tolist()] if variant.any() else list(cols.names)
    elif isinstance(names, str):
        names = [names]
    else:
        names = list(names)
    return Wants([index] * len(names), names, [None] * len(names)), early


def _begin_head(ckpt_dir_or_file, storage_options, timeout) -> EarlyRead | None:
    """The GET for the head of the data file a prefix names when it has one (None for local
    files and an opened index). A directory's guess fails, unused, like its size query in
    ``index.py``."""
    if isinstance(ckpt_dir_or_file, CheckpointIndex):
        return None
    path = os.fspath(ckpt_dir_or_file)
    return Storage.for_url(path, storage_options, timeout=timeout).begin_head(usual_data_file(path))


def _head_start(names, executor, max_inflight_bytes) -> bool:
    """Whether to read the data file's head while its index is read: for every tensor, read by
    threads in this process (a Ray worker would read for itself), with no byte budget (the head
    is held until the plan's reads take it)."""
    return (
        names is None
        and max_inflight_bytes is None
        and (executor in (None, "threads") or isinstance(executor, ThreadExecutor))
    )


def restore_tensors(
    ckpt_dir_or_file,
    names: Sequence[str] | None = None,
    *,
    executor: Executor | str = "threads",
    storage_options: dict | None = None,
    verify: bool = True,
    max_inflight_bytes: int | None = None,
    progress=None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> dict[str, np.ndarray]:
    """Restore tensors (all of them by default; variants are skipped) as ``{name: array}``.

    ``executor``: "threads" (default), "ray", or an Executor. ``verify``: check every CRC32C.
    ``max_inflight_bytes``: cap on outstanding reads. ``progress``: True for a tqdm bar on a
    terminal (log lines otherwise) or a ``callback(bytes_done, bytes_total, tensors_done,
    tensors_total)``. ``timeout``: seconds a request may stall before it is retried;
    ``deadline``: seconds for the whole call, opening the checkpoint included. Scalars come back
    as 0-d arrays, strings as object arrays of bytes.
    """
    at = deadline_at(deadline)
    head = _head_start(names, executor, max_inflight_bytes)
    wants, early = _wants(ckpt_dir_or_file, names, storage_options, timeout, at, head)
    try:
        arrays = _fetch(wants, executor, verify, max_inflight_bytes, progress, timeout, at, unique=names is None)
    finally:
        if early is not None:
            early.discard()
    return dict(zip(wants.names, arrays))


def iter_restore_tensors(
    ckpt_dir_or_file,
    names: Sequence[str] | None = None,
    *,
    executor: Executor | str = "threads",
    storage_options: dict | None = None,
    verify: bool = True,
    max_inflight_bytes: int | None = None,
    progress=None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Streaming ``restore_tensors``: yield ``(name, array)`` as each tensor completes."""
    at = deadline_at(deadline)
    head = _head_start(names, executor, max_inflight_bytes)
    wants, early = _wants(ckpt_dir_or_file, names, storage_options, timeout, at, head)
    try:
        for i, arr in _iter_fetch(wants, executor, verify, max_inflight_bytes, progress, timeout, at):
            yield wants.names[i], arr
    finally:
        if early is not None:
            early.discard()
