"""Assembly: destination buffers for a plan's requests, checksums, and placing staged bytes.

An :class:`Assembly` is the library's read sink (``distrestore.execute.sink.ReadSink``): it owns
the output arrays (allocated once, lazily, when the first request that writes them is issued) and
the staging buffers. Executors ask it for the buffers a request reads into, then report the
request done; it verifies each stored entry's CRC32C (per segment, in the reading thread while the
bytes are in cache, combined per entry, including the checksum-only segments that read the rest of
a partly wanted entry into a per-thread scratch buffer), decodes strings, copies staged bytes into
outputs (slices into full tensors or into any new partitioning) and tells the executor which
outputs are complete.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from itertools import repeat
from operator import is_

import numpy as np

from .errors import ChecksumMismatchError
from .execute.sink import Allocator
from .format import crc, dtypes
from .format.slices import box_shape, relative
from .format.strings import decode_strings
from .memory import MAPPED_MIN_BYTES, DestinationMemory
from .plan import strides
from .readplan import DIRECT, PACKED, SKIP, STAGED, ReadPlan, ReadRequest, SegmentKind

_SKIP_CHUNK = 1 << 20


class Assembly:
    """The read sink of one plan. ``verify``: check every CRC32C (a plan that reads only part
    of a stored entry, made with ``PlanOptions(verify=False)``, is refused: ``ValueError``);
    ``names``: output names (the plan carries none for packed outputs), for messages;
    ``allocate``: where buffers that reads land in live (see
    ``distrestore.execute.sink.Allocator``); None (or a None answer) for
    ``distrestore.memory.DestinationMemory``: large buffers in mappings of their own, with
    huge pages only where they are cheap to fault in.

    ``allocate`` is also an attribute: an executor that learns where buffers go only once it
    runs (the Ray executor's shared-memory arena, until it supplies ``Executor.allocator``) may
    set it before its first ``buffers`` call and reset it to None when done.
    """

    def __init__(
        self,
        plan: ReadPlan,
        *,
        verify: bool = True,
        names: Sequence[str] | None = None,
        allocate: Allocator | None = None,
    ):
        self.plan = plan
        self.names = names  # output names, for messages about packed outputs
        self.verify = verify
        self.allocate = allocate
        self._memory: DestinationMemory | None = None  # made at the first large buffer
        self._lock = threading.Lock()
        n = len(plan.outputs)
        self._arrays: list[np.ndarray | None] = [None] * n
        self._bytes: list[memoryview | None] = [None] * n
        self._stage: dict[int, np.ndarray] = {}
        self._stage_left = [s.size for s in plan.staging]
        self._packed: dict[int, np.ndarray] = {}
        self._packed_left = [p.size for p in plan.packed]
        self._entry_parts: dict[int, list[tuple[int, int, int]]] = {}
        self._entry_left = {i: e.size for i, e in enumerate(plan.entries)}
        self._entry_outputs: dict[int, set[int]] = {}
        if verify:  # no byte may be returned unless a checked CRC32C covers it
            for e in plan.entries:
                if not e.verify:
                    raise ValueError(
                        f"this plan reads only part of stored entry {e.name!r} ({e.file}), so its "
                        "CRC32C cannot be checked: plan with PlanOptions(verify=True) to verify"
                    )
        # strings are checked where they are decoded (their checksum covers lengths and bytes)
        self._check = [self.verify and dtypes.BY_NAME[e.dtype].fixed_width for e in plan.entries]
        # an output is complete when every direct segment, every copy into it and every
        # checksum of an entry feeding it is done: one item here per such event
        waits: list[int] = []
        for req in plan.requests:
            for seg in req.segments:
                if seg.kind == DIRECT:
                    waits.append(seg.target)
                    self._entry_outputs.setdefault(seg.entry, set()).add(seg.target)
        for st in plan.staging:
            for c in st.copies:
                waits.append(c.output)
                self._entry_outputs.setdefault(st.entry, set()).add(c.output)
        for eid, outs in self._entry_outputs.items():
            if self._check[eid]:
                waits.extend(outs)
        # counted in numpy: 10^5 outputs are one call, not a list that numpy converts
        marks = np.bincount(np.asarray(waits, np.int64), minlength=n)
        if plan.packed:  # only its group completes a packed output
            marks[np.concatenate([p.outputs for p in plan.packed])] = 1
        self._pending = marks.tolist()
        self.ready: list[int] = np.flatnonzero(marks == 0).tolist()
        for i in self.ready:
            self._array(i)
        self._skip = threading.local()

    # -- buffers -----------------------------------------------------------------------------

    def _array(self, i: int) -> np.ndarray:
        arr = self._arrays[i]
        if arr is None:
            out = self.plan.outputs[i]
            dt = dtypes.BY_NAME[out.dtype]
            buf = self._alloc(DIRECT, i, dt.itemsize * math.prod(out.shape)) if dt.fixed_width else None
            arr = np.empty(out.shape, dtype=dt.numpy) if buf is None else buf.view(dt.numpy).reshape(out.shape)
            if not dt.fixed_width:
                arr.fill(b"")
            self._arrays[i] = arr
            if dt.fixed_width:
                self._bytes[i] = memoryview(arr.reshape(-1).view(np.uint8))
        return arr

    def _stage_buf(self, sid: int) -> np.ndarray:
        buf = self._stage.get(sid)
        if buf is None:
            n = self.plan.staging[sid].size
            buf = self._alloc(STAGED, sid, n)
            buf = self._stage[sid] = np.empty(n, dtype=np.uint8) if buf is None else buf
        return buf

    def _alloc(self, kind: SegmentKind, index: int, nbytes: int) -> np.ndarray | None:
        """A uint8 buffer of ``nbytes`` from the executor's allocator, else from destination
        memory; None for a small one that numpy allocates as usual (call under the lock)."""
        buf = self.allocate(kind, index, nbytes) if self.allocate is not None else None
        if buf is not None or nbytes < MAPPED_MIN_BYTES:
            return buf
        if self._memory is None:
            self._memory = DestinationMemory()
        return self._memory.empty(nbytes)

    def _skip_buf(self, n: int) -> memoryview:
        """This thread's scratch buffer for a request's SKIP segments (at most a request's
        size, reused: a huge entry's unneeded bytes never need a buffer of their own)."""
        buf = getattr(self._skip, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._skip.buf = bytearray(max(n, _SKIP_CHUNK))
        return memoryview(buf)[:n]

    def buffers(self, req: ReadRequest) -> list[memoryview]:
        """Writable buffers, one per segment, that the request's bytes land in, in order."""
        views = []
        with self._lock:
            for seg in req.segments:
                if seg.kind == DIRECT:
                    self._array(seg.target)
                    views.append(self._bytes[seg.target][seg.offset : seg.offset + seg.length])
                elif seg.kind == STAGED:
                    views.append(memoryview(self._stage_buf(seg.target))[seg.offset : seg.offset + seg.length])
                elif seg.kind == PACKED:
                    buf = self._packed.get(seg.target)
                    if buf is None:
                        n = self.plan.packed[seg.target].size
                        buf = self._alloc(PACKED, seg.target, n)
                        buf = self._packed[seg.target] = np.empty(n, np.uint8) if buf is None else buf
                    views.append(memoryview(buf)[seg.offset : seg.offset + seg.length])
                else:
                    views.append(None)
        skipped = sum(seg.length for seg in req.segments if seg.kind == SKIP)
        if not skipped:
            return views
        # each SKIP segment its own part of the scratch: a checksum-only segment's CRC32C may
        # be taken after the whole request is read
        scratch, pos = self._skip_buf(skipped), 0
        for i, seg in enumerate(req.segments):
            if seg.kind == SKIP:
                views[i] = scratch[pos : pos + seg.length]
                pos += seg.length
        return views

    # -- completion --------------------------------------------------------------------------

    def segment_checks(self, req: ReadRequest) -> tuple[bool, ...]:
        """Per segment: whether its CRC32C is taken (its stored entry is verified)."""
        check = self._check
        return tuple(seg.entry >= 0 and check[seg.entry] for seg in req.segments)

    def checksums(self, req: ReadRequest, views: Sequence, known: Sequence[int] | None = None) -> list[int | None]:
        """CRC32C of every segment whose entry is verified (call in the reading thread);
        ``known``: the CRC32C of every view, when the read computed them."""
        checks = self.segment_checks(req)
        if known is not None:
            return [c if ok else None for ok, c in zip(checks, known)]
        return [crc.value(v) if ok else None for ok, v in zip(checks, views)]

    def complete(self, req: ReadRequest, crcs: Sequence[int | None]) -> list[int]:
        """Record a finished request; return the outputs it completed. Raises on bad checksums."""
        done_outputs: list[int] = []
        finished_stages = []
        finished_packs = []
        with self._lock:
            for seg, c in zip(req.segments, crcs):
                if seg.kind == PACKED:
                    self._packed_left[seg.target] -= seg.length
                    if self._packed_left[seg.target] == 0:
                        finished_packs.append(seg.target)
                    continue
                if seg.kind == DIRECT:
                    self._dec(seg.target, done_outputs)
                elif seg.kind == STAGED:
                    self._stage_left[seg.target] -= seg.length
                    if self._stage_left[seg.target] == 0:
                        finished_stages.append(seg.target)
                if c is not None and seg.entry >= 0:  # SKIP ones too: bytes read only to check
                    parts = self._entry_parts.setdefault(seg.entry, [])
                    parts.append((seg.entry_offset, seg.length, c))
                    self._entry_left[seg.entry] -= seg.length
                    if self._entry_left[seg.entry] == 0:
                        self._verify_entry(seg.entry, parts)
                        del self._entry_parts[seg.entry]
                        for o in self._entry_outputs.get(seg.entry, ()):
                            self._dec(o, done_outputs)
        for pid in finished_packs:
            done_outputs.extend(self._unpack(pid))
        for sid in finished_stages:  # copies run outside the lock: they may be large
            self._unstage(sid)
            with self._lock:
                for c in self.plan.staging[sid].copies:
                    self._dec(c.output, done_outputs)
        return done_outputs

    def _dec(self, out: int, done: list[int]) -> None:
        self._pending[out] -= 1
        if self._pending[out] == 0:
            done.append(out)

    def _verify_entry(self, eid: int, parts: list[tuple[int, int, int]]) -> None:
        parts.sort()
        value = 0
        for _, length, c in parts:
            value = crc.combine(value, c, length)
        e = self.plan.entries[eid]
        if value != crc.unmask(e.crc32c):
            raise ChecksumMismatchError(
                f"checksum mismatch for tensor {e.name!r}: {e.file} bytes "
                f"[{e.offset}, {e.offset + e.size}) (crc32c {value:#010x}, index says "
                f"{crc.unmask(e.crc32c):#010x}); the data file is corrupt"
            )

    def _unpack(self, pid: int) -> list[int]:
        """Verify every small tensor of a packed buffer (one batched CRC call) and hand each
        out as a view of the buffer."""
        p = self.plan.packed[pid]
        buf = self._packed.pop(pid)
        if self.verify:
            bad = crc.first_mismatch(buf, p.offsets, p.sizes, p.crcs)
            if bad >= 0:
                name = self.plan_names(int(p.outputs[bad]))
                a = p.start + int(p.offsets[bad])
                raise ChecksumMismatchError(
                    f"checksum mismatch for tensor {name!r}: {p.file} bytes [{a}, "
                    f"{a + int(p.sizes[bad])}); the data file is corrupt"
                )
        arrays = self._arrays
        by_enum = dtypes.BY_ENUM
        outs = p.outputs.tolist()
        offsets = p.offsets.tolist()
        layouts, offs, sizes = p.layouts, p.offsets, p.sizes
        # runs of back-to-back tensors of one dtype and shape become one stacked view whose
        # rows numpy hands out in C: far cheaper than an ndarray() call (and buffer export) each
        cut = np.flatnonzero((layouts[1:] != layouts[:-1]) | (offs[1:] != offs[:-1] + sizes[:-1])) + 1
        bounds = [0, *cut.tolist(), len(outs)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            shape = p.shapes[a]
            dt = by_enum[int(p.dtypes[a])].numpy
            if b - a >= 8 and shape and int(sizes[a]):
                rows = np.ndarray((b - a, *shape), dt, buf, offsets[a])
                for out_id, view in zip(outs[a:b], rows):
                    arrays[out_id] = view
            else:
                for i in range(a, b):
                    arrays[outs[i]] = np.ndarray(p.shapes[i], dt, buf, offsets[i])
        return outs  # their pending counts are not consulted again: the group completed them

    def _unstage(self, sid: int) -> None:
        st = self.plan.staging[sid]
        e = self.plan.entries[st.entry]
        dt = dtypes.BY_NAME[e.dtype]
        buf = self._stage.pop(sid)
        if not dt.fixed_width:
            where = f"tensor {e.name!r} in {e.file} bytes [{e.offset}, {e.offset + e.size})"
            shape = box_shape(e.box)
            count = int(np.prod(shape, dtype=np.int64))
            src = decode_strings(buf, count, shape, stored_crc=e.crc32c if self.verify else None, where=where)
            for c in st.copies:
                out = self.plan.outputs[c.output]
                with self._lock:
                    arr = self._array(c.output)
                arr[relative(c.box, out.box)] = src[relative(c.box, e.box)]
            return
        npdt = dt.numpy.newbyteorder(">") if e.big_endian else dt.numpy
        item = dt.itemsize
        steps = tuple(s * item for s in strides(box_shape(e.box)))
        for c in st.copies:
            out = self.plan.outputs[c.output]
            first = sum((a - o) * s for (a, _), (o, _), s in zip(c.box, e.box, steps))
            src = np.ndarray(box_shape(c.box), dtype=npdt, buffer=buf, offset=first - st.start, strides=steps)
            with self._lock:
                arr = self._array(c.output)
            arr[relative(c.box, out.box)] = src

    def plan_names(self, out_id: int) -> str:
        """The tensor name of an output (packed outputs carry none in the plan)."""
        out = self.plan.outputs[out_id]
        return out.name if out is not None else (self.names[out_id] if self.names else f"#{out_id}")

    def tensor_names(self, req: ReadRequest, limit: int = 3) -> str:
        """The tensors a request reads, for error messages."""
        names = sorted(
            {self.plan.entries[s.entry].name for s in req.segments if s.entry >= 0}
            | {
                self.plan_names(o)
                for s in req.segments
                if s.kind == PACKED
                for o in self.plan.packed[s.target].outputs[:limit].tolist()
            }
        )
        return ", ".join(repr(n) for n in names[:limit]) + (
            f" and {len(names) - limit} more" if len(names) > limit else ""
        )

    # -- results -----------------------------------------------------------------------------

    def take_all(self) -> list[np.ndarray]:
        """Every output, once the whole plan is done."""
        arrays = self._arrays
        if any(map(is_, arrays, repeat(None))):  # outputs with nothing to read (empty): made now
            for i in [i for i, a in enumerate(arrays) if a is None]:
                self._array(i)
        out, self._arrays = arrays, [None] * len(arrays)
        self._bytes = [None] * len(arrays)
        return out

    def take(self, i: int) -> np.ndarray:
        """Hand over a completed output and forget it (streaming frees memory this way)."""
        arr = self._arrays[i]
        if arr is None:  # an output with nothing to read (zero elements)
            arr = self._array(i)
        self._arrays[i] = None
        self._bytes[i] = None
        return arr
