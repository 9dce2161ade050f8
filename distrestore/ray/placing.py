"""Driver-side placing of read actors' results: into the assembly's buffers, or the arena.

An actor returns a request's needed bytes as runs of whole segments (``ReadResult.parts``); the
driver copies them into the buffers the :class:`~distrestore.assemble.Assembly` hands out (one
copy, out of the object store), or writes them into the shared-memory arena when the buffers
live there. ``arena_layout`` sizes that arena for a plan and ``bind`` points a task at it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..assemble import Assembly
from ..format import dtypes
from ..plan import DIRECT, PACKED, SKIP, STAGED, ReadPlan, ReadRequest
from .shm import Arena
from .worker import ReadTask

_NUMPY_COPY_BYTES = 1 << 16


def checked_segments(assembly: Assembly, req: ReadRequest) -> tuple[bool, ...]:
    """Per segment of ``req``, whether the assembly checks its CRC32C (its entry is verified):
    the rule of ``Assembly.checksums``, asked through it with placeholder CRCs."""
    return tuple(c is not None for c in assembly.checksums(req, (), known=(0,) * len(req.segments)))


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


def place_parts(assembly: Assembly, req: ReadRequest, parts: Sequence[np.ndarray]) -> int:
    """Copy a request's needed bytes from the object store into the assembly's buffers: the one
    copy on the driver. Big segments are copied by numpy, which releases the GIL, so several
    placing threads run in parallel. Returns the bytes shipped."""
    views = assembly.buffers(req)
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


def bind(task: ReadTask, assembly: Assembly, arena: Arena, shared: bool) -> ReadTask:
    """The task with the arena offset of every needed segment, its buffers allocated there; for
    an actor that has the arena open (``shared``), also the arena to write into."""
    dests = []
    for req in task.requests:
        assembly.buffers(req)  # allocates them, through ``Assembly.allocate``
        dests.append(
            tuple(-1 if s.kind == SKIP else arena.offsets[(s.kind, s.target)] + s.offset for s in req.segments)
        )
    return task._replace(arena=arena.path if shared else None, dests=tuple(dests))


def arena_layout(plan: ReadPlan) -> tuple[dict[tuple[int, int], int], list[tuple[int, int]]]:
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


def task_bytes(task: ReadTask) -> int:
    return sum(r.nbytes for r in task.requests)
