"""Parallel restore of raw tensors: ``fetch`` (regions, many checkpoints, one plan) and
``restore_tensors`` (a checkpoint's tensors by name), each with a streaming form.

Every call plans all its reads at once, so many tensors, regions and checkpoints are read
together, each byte once, and nothing is returned unless every read and checksum succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .assemble import Assembly
from .execute import Executor, get_executor
from .index import CheckpointIndex, open_checkpoint
from .plan import PlanOptions, ReadPlan, Want, build_plan
from .progress import make_progress

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclass(frozen=True)
class TensorRequest:
    """A wanted tensor, or a region of it (a tuple of step-1 slices in the full tensor's
    coordinates; None means the whole tensor). Partitioned tensors are assembled transparently."""

    checkpoint: CheckpointIndex
    name: str
    region: tuple | None = None


def plan_requests(requests: Sequence[TensorRequest], executor: Executor | str = "threads",
                  max_inflight_bytes: int | None = None) -> ReadPlan:
    """The ``ReadPlan`` a fetch of these requests would run (for inspection: ``print(plan)``)."""
    executor = get_executor(executor)
    local = all(r.checkpoint.storage.local for r in requests)
    options = PlanOptions.for_storage(local, executor.workers_for(local), max_inflight_bytes)
    return build_plan([Want(r.checkpoint, r.name, r.region) for r in requests], options)


def iter_fetch(requests: Sequence[TensorRequest], *, executor: Executor | str = "threads",
               verify: bool = True, max_inflight_bytes: int | None = None,
               progress=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(request index, array)`` as each request's array completes.

    At most ``max_inflight_bytes`` of reads are outstanding; arrays are allocated when their
    first read starts and forgotten once yielded, so a consumer that drops them restores a
    checkpoint larger than memory (peak: the budget plus the tensors being assembled).
    """
    requests = list(requests)
    executor = get_executor(executor)
    plan = plan_requests(requests, executor, max_inflight_bytes)
    storages = {}
    for r in requests:
        for f in r.checkpoint.data_files():
            storages[f] = r.checkpoint.storage
    assembly = Assembly(plan, verify=verify)
    prog = make_progress(progress, plan.bytes_to_read, len(plan.outputs))
    try:
        for i in executor.run(plan, assembly, storages, max_inflight_bytes=max_inflight_bytes,
                              progress=prog):
            yield i, assembly.take(i)
    finally:
        if prog is not None:
            prog.close()


def fetch(requests: Sequence[TensorRequest], *, executor: Executor | str = "threads",
          verify: bool = True, max_inflight_bytes: int | None = None, progress=None) -> list[np.ndarray]:
    """Read every request as one parallel plan; arrays in request order, or an error and nothing."""
    requests = list(requests)
    out: list = [None] * len(requests)
    for i, arr in iter_fetch(requests, executor=executor, verify=verify,
                             max_inflight_bytes=max_inflight_bytes, progress=progress):
        out[i] = arr
    return out


def _requests(ckpt_dir_or_file, names, storage_options) -> list[TensorRequest]:
    index = open_checkpoint(ckpt_dir_or_file, storage_options=storage_options)
    if names is None:
        names = [n for n, e in index.entries.items() if not e.dtype.is_variant]
    elif isinstance(names, str):
        names = [names]
    return [TensorRequest(index, n) for n in names]


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
