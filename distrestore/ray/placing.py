"""Driver-side placing of read actors' results: into the read sink's buffers, or the arena.

An actor returns a request's needed bytes as runs of whole segments (``ReadResult.parts``); the
driver copies them into the buffers the read sink (``distrestore.execute.sink.ReadSink``) hands
out (one copy, out of the object store), or writes them into the shared-memory arena when the
buffers live there. ``open_arena`` makes that arena for a plan and has the actors on the driver's node
open it, ``bind`` points a task at it, ``close_arena`` has them close it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import ray

from ..execute.sink import ReadSink
from ..format import dtypes
from ..readplan import DIRECT, PACKED, SKIP, STAGED, ReadPlan, ReadRequest
from .pool import Pool
from .shm import Arena
from .worker import ReadTask

_NUMPY_COPY_BYTES = 1 << 16
log = logging.getLogger("distrestore")


def shipped(req: ReadRequest, parts: Sequence[np.ndarray]) -> Iterator[tuple[int, memoryview]]:
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


def place_parts(sink: ReadSink, req: ReadRequest, parts: Sequence[np.ndarray]) -> int:
    """Copy a request's needed bytes from the object store into the sink's buffers: the one
    copy on the driver. Big segments are copied by numpy, which releases the GIL, so several
    placing threads run in parallel. Returns the bytes shipped."""
    views = sink.buffers(req)
    for k, src in shipped(req, parts):
        if src.nbytes >= _NUMPY_COPY_BYTES:
            np.copyto(np.frombuffer(views[k], np.uint8), np.frombuffer(src, np.uint8))
        else:
            views[k][:] = src
    return sum(memoryview(p).nbytes for p in parts)


def write_parts(arena: Arena, req: ReadRequest, parts: Sequence[np.ndarray], dests: Sequence[int]) -> int:
    """Write a request's shipped bytes into its buffers in the arena, through the file (see
    ``Arena.reserve`` for why not through the mapping). Returns the bytes shipped."""
    for k, src in shipped(req, parts):
        arena.write(dests[k], src)
    return sum(memoryview(p).nbytes for p in parts)


def bind(task: ReadTask, sink: ReadSink, arena: Arena, shared: bool) -> ReadTask:
    """The task with the arena offset of every needed segment, its buffers allocated there; for
    an actor that has the arena open (``shared``), also the arena to write into."""
    dests = []
    for req in task.requests:
        sink.buffers(req)  # allocates them, in the arena (the executor's allocator)
        dests.append(
            tuple(-1 if s.kind == SKIP else arena.offsets[(s.kind, s.target)] + s.offset for s in req.segments)
        )
    return task._replace(arena=arena.path if shared else None, dests=tuple(dests))


def arena_layout(plan: ReadPlan) -> tuple[dict[tuple[int, int], int], list[tuple[int, int]]]:
    """The bytes of every buffer reads land in, keyed as the executor's allocator is asked:
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


def task_bytes(task: ReadTask) -> int:
    return sum(r.nbytes for r in task.requests)


def open_arena(plan: ReadPlan, pool: Pool, timeout: float) -> tuple[Arena | None, list[int]]:
    """A shared-memory arena for the plan's buffers, and the actors that opened it: those on
    the driver's node by Ray node id (others, even on this machine, ship their results).
    None where there is no room or no such actor, or in a Ray Client session (the driver's
    memory is on another machine than the node it names)."""
    here = ray.get_runtime_context().get_node_id()
    mine = [i for i, node in enumerate(pool.nodes) if node == here]
    if not mine or ray.util.client.ray.is_connected():
        return None, []
    sizes, reserve = arena_layout(plan)
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
        ray.wait(refs, num_returns=len(refs), timeout=timeout)
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


def close_arena(pool: Pool, arena: Arena, opened) -> None:
    """The actors close the arena once their running tasks are done; until then its memory stays
    with them (waiting makes its release certain when a run returns)."""
    try:
        closing = [pool.actors[i].close_arena.remote(arena.path) for i in opened]
        ray.wait(closing, num_returns=len(closing), timeout=10)
    except Exception:
        pass
