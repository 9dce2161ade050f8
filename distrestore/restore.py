"""Parallel restore of raw tensors: ``fetch`` (regions, many checkpoints, one plan) and
``restore_tensors`` (a checkpoint's tensors by name), each with a streaming form.

Every call plans all its reads at once, so many tensors, regions and checkpoints are read
together, each byte once, and nothing is returned unless every read and checksum succeeded.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ._gc import gc_paused
from .assemble import Assembly
from .execute import Executor, get_executor
from .index import CheckpointIndex, open_checkpoint
from .plan import PlanOptions, ReadPlan, build_plan
from .progress import make_progress

class TensorRequest(NamedTuple):
    """A wanted tensor, or a region of it (a tuple of step-1 slices in the full tensor's
    coordinates; None means the whole tensor). Partitioned tensors are assembled transparently.
    (Immutable; a NamedTuple because restores make one per tensor, 10^5 of them at times.)"""

    checkpoint: CheckpointIndex
    name: str
    region: tuple | None = None


def plan_requests(requests: Sequence[TensorRequest], executor: Executor | str = "threads",
                  max_inflight_bytes: int | None = None) -> ReadPlan:
    """The ``ReadPlan`` a fetch of these requests would run (for inspection: ``print(plan)``)."""
    executor = get_executor(executor)
    local = all(c.storage.local for c in {id(r.checkpoint): r.checkpoint for r in requests}.values())
    options = PlanOptions.for_storage(local, executor.workers_for(local), max_inflight_bytes)
    with gc_paused():
        return build_plan(requests, options)


def _run(requests: list[TensorRequest], executor, verify, max_inflight_bytes, progress):
    """Run one plan; yield (assembly, batch of completed request indices)."""
    executor = get_executor(executor)
    plan = plan_requests(requests, executor, max_inflight_bytes)
    storages = {}
    for index in {id(r.checkpoint): r.checkpoint for r in requests}.values():
        for f in index.data_files():
            storages[f] = index.storage
    assembly = Assembly(plan, verify=verify, names=[r.name for r in requests])
    prog = make_progress(progress, plan.bytes_to_read, len(plan.outputs))
    try:
        for batch in executor.run(plan, assembly, storages, max_inflight_bytes=max_inflight_bytes,
                                  progress=prog):
            yield assembly, (batch,) if isinstance(batch, int) else batch
    finally:
        if prog is not None:
            prog.close()


def iter_fetch(requests: Sequence[TensorRequest], *, executor: Executor | str = "threads",
               verify: bool = True, max_inflight_bytes: int | None = None,
               progress=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(request index, array)`` as each request's array completes.

    At most ``max_inflight_bytes`` of reads are outstanding; arrays are allocated when their
    first read starts and forgotten once yielded, so a consumer that drops them restores a
    checkpoint larger than memory (peak: the budget plus the tensors being assembled).
    """
    for assembly, batch in _run(list(requests), executor, verify, max_inflight_bytes, progress):
        for i in batch:
            yield i, assembly.take(i)


def fetch(requests: Sequence[TensorRequest], *, executor: Executor | str = "threads",
          verify: bool = True, max_inflight_bytes: int | None = None, progress=None) -> list[np.ndarray]:
    """Read every request as one parallel plan; arrays in request order, or an error and nothing.
    Identical requests are read once (later ones get copies)."""
    requests = list(requests)
    keys = list(zip(map(id, map(attrgetter("checkpoint"), requests)), map(attrgetter("name"), requests),
                    map(_region_key, map(attrgetter("region"), requests))))
    if len(set(keys)) == len(keys):
        unique, source = requests, None
    else:
        first: dict[tuple, int] = {}
        unique, source = [], []
        for r, key in zip(requests, keys):
            if key not in first:
                first[key] = len(unique)
                unique.append(r)
            source.append(first[key])
    got: list = [None] * len(unique)
    with gc_paused():  # 10^5 arrays at once: see _gc
        for assembly, batch in _run(unique, executor, verify, max_inflight_bytes, progress):
            for i in batch:
                got[i] = assembly.take(i)
    if source is None:
        return got
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


def _requests(ckpt_dir_or_file, names, storage_options) -> list[TensorRequest]:
    index = open_checkpoint(ckpt_dir_or_file, storage_options=storage_options)
    if names is None:
        names = [n for n, e in index.entries.items() if not e.dtype.is_variant]
    elif isinstance(names, str):
        names = [names]
    make = tuple.__new__  # TensorRequest(index, n) without the NamedTuple's Python-level __new__
    return [make(TensorRequest, (index, n, None)) for n in names]


def restore_tensors(ckpt_dir_or_file, names: Sequence[str] | None = None, *,
                    executor: Executor | str = "threads", storage_options: dict | None = None,
                    verify: bool = True, max_inflight_bytes: int | None = None,
                    progress=None) -> dict[str, np.ndarray]:
    """Restore tensors (all of them by default; variants are skipped) as ``{name: array}``.

    ``executor``: "threads" (default), "ray", or an Executor. ``verify``: check every CRC32C.
    ``max_inflight_bytes``: cap on outstanding reads. ``progress``: True for a tqdm bar on a
    terminal (log lines otherwise) or a ``callback(bytes_done, bytes_total, tensors_done,
    tensors_total)``. Scalars come back as 0-d arrays, strings as object arrays of bytes.
    """
    requests = _requests(ckpt_dir_or_file, names, storage_options)
    arrays = fetch(requests, executor=executor, verify=verify,
                   max_inflight_bytes=max_inflight_bytes, progress=progress)
    return {r.name: a for r, a in zip(requests, arrays)}


def iter_restore_tensors(ckpt_dir_or_file, names: Sequence[str] | None = None, *,
                         executor: Executor | str = "threads", storage_options: dict | None = None,
                         verify: bool = True, max_inflight_bytes: int | None = None,
                         progress=None) -> Iterator[tuple[str, np.ndarray]]:
    """Streaming ``restore_tensors``: yield ``(name, array)`` as each tensor completes."""
    requests = _requests(ckpt_dir_or_file, names, storage_options)
    for i, arr in iter_fetch(requests, executor=executor, verify=verify,
                             max_inflight_bytes=max_inflight_bytes, progress=progress):
        yield requests[i].name, arr
