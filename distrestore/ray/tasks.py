"""The Ray executor's read tasks seen from the driver: a plan's requests grouped into tasks,
and what a task failed on, named (file, byte range, tensors).

A task is a small descriptor (``worker.ReadTask``) that a read actor runs; grouping keeps plan
order and makes tasks of about the size the executor asks for, never over its budget unless
one request alone is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ray

from ..errors import (
    CheckpointNotFoundError,
    DeadlineExceededError,
    DistRestoreError,
    ReadWorkerLostError,
    StorageError,
)
from ..execute.sink import ReadSink
from ..readplan import ReadPlan, ReadRequest
from ..storage import Storage
from .worker import ReadResult, ReadTask


def group_tasks(
    plan: ReadPlan, sink: ReadSink, storages: Mapping[str, Storage], limit: float, threads: int, map_local: bool
) -> list[ReadTask]:
    """Requests in plan order, grouped into tasks of about ``limit`` bytes; ``threads``:
    concurrent requests in a task; ``map_local``: local files are mapped, not read."""
    out: list[ReadTask] = []
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
        checks = tuple(sink.segment_checks(r) for r in cur)
        out.append(ReadTask(tuple(st_list), tuple(reqs), tuple(st_ids), checks, threads, map_local))
        cur.clear()

    for req in plan.requests:
        if cur and size + req.nbytes > limit:
            flush()
            size = 0
        cur.append(req)
        size += req.nbytes
    flush()
    return out


def overdue(tasks: list[ReadTask], sink: ReadSink) -> DeadlineExceededError:
    """The deadline passed with ``tasks`` outstanding: their reads, named (the first five)."""
    reqs = [r for t in tasks for r in t.requests]
    shown = "; ".join(f"{r.file} bytes [{r.start}, {r.end}) (tensors {sink.tensor_names(r)})" for r in reqs[:5])
    more = f" and {len(reqs) - 5} more" if len(reqs) > 5 else ""
    return DeadlineExceededError(f"the deadline passed with {len(reqs)} read(s) outstanding: {shown}{more}")


def _where(task: ReadTask, sink: ReadSink, index: int | None) -> str:
    req = task.requests[index if index is not None else 0]
    more = "" if index is not None or len(task.requests) == 1 else f" and {len(task.requests) - 1} more ranges"
    return f"{req.file} bytes [{req.start}, {req.end}){more} (tensors {sink.tensor_names(req)})"


def get_result(ref, task: ReadTask, sink: ReadSink) -> ReadResult:
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
            raise type(cause)(f"{cause} (reading tensors {sink.tensor_names(req)})") from e
        if isinstance(cause, DistRestoreError):
            raise cause from e
        raise
    except ray.exceptions.RayError as e:  # the actor (or its node) died past its restarts
        raise ReadWorkerLostError(
            f"a Ray read worker failed while reading {_where(task, sink, None)}: {type(e).__name__}: {e}"
        ) from e
