"""The read planner: from wanted tensors (or regions of them) to a ``ReadPlan`` of byte ranges.

Each wanted region becomes one *output*; each stored entry that holds part of it contributes a
*piece*. A piece whose bytes are contiguous both in the data file and in the output is read
straight into the output ("direct"); anything else (strings, a column block, a foreign byte
order, bytes two outputs share) is read once into a *staging* buffer and copied out; small whole
tensors are read in packed groups and handed out as views. With ``PlanOptions.verify`` (the
default) the rest of every stored entry a region touches is read too, as checksum-only ranges,
because TF's CRC32C covers whole entries; where the wanted regions together cover an entry,
nothing extra is read. Byte ranges are then split so every worker stays busy and joined when
adjacent (or across gaps up to ``max_gap_bytes``, 0 by default so that subset restores with
``verify=False`` read only needed bytes), so small tensors do not cost a request each. The plan
is plain, frozen, picklable data, defined in ``distrestore.readplan`` (and importable from here).

No I/O of its own. What each stored entry claims is checked before anything is sized from it:
its shape, size and slices, and its bytes against its data file's size, which the index asks once
per file (docs/hostile-input.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import NamedTuple, Protocol

import numpy as np

from . import readplan
from .errors import CorruptCheckpointError, UnsupportedCheckpointError
from .format import dtypes
from .format.checks import check_stored_size
from .format.messages import TensorEntry
from .format.slices import Box, box_from_region, box_shape, box_size, intersect
from .index import CheckpointIndex
from .readplan import (
    DIRECT,
    PACKED,
    SKIP,
    STAGED,
    Copy,
    Output,
    Packed,
    PlanOptions,
    ReadPlan,
    ReadRequest,
    Segment,
    SegmentKind,
    Staging,
    StoredEntry,
)

__all__ = [*readplan.__all__, "Want", "Wants", "build_plan", "strides"]


class Want(Protocol):
    """A region of one checkpoint tensor (region: tuple of step-1 slices, None = all); e.g. a
    ``restore.TensorRequest``."""

    checkpoint: CheckpointIndex
    name: str
    region: tuple | None


class Wants(NamedTuple):
    """Wanted tensors as parallel lists: how a restore of 10^5 tensors carries its requests
    without an object per tensor. ``of`` converts any sequence of ``Want``s."""

    checkpoints: list[CheckpointIndex]
    names: list[str]
    regions: list  # tuple of slices, or None for the whole tensor

    @classmethod
    def of(cls, wants) -> Wants:
        if isinstance(wants, Wants):
            return wants
        wants = list(wants)
        return cls(
            list(map(attrgetter("checkpoint"), wants)),
            list(map(attrgetter("name"), wants)),
            list(map(attrgetter("region"), wants)),
        )

    def distinct_checkpoints(self) -> list[CheckpointIndex]:
        cps = self.checkpoints
        if cps and cps.count(cps[0]) == len(cps):  # one checkpoint: a C-level scan
            return [cps[0]]
        return list(dict(zip(map(id, cps), cps)).values())

    def all_whole(self) -> bool:
        return self.regions.count(None) == len(self.regions)


def strides(shape: Sequence[int]) -> list[int]:
    """Row-major element strides of ``shape`` (the last dimension's is 1)."""
    out = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        out[i] = out[i + 1] * shape[i + 1]
    return out


def _flat(point: Sequence[int], origin: Box, steps: Sequence[int]) -> int:
    return sum((p - o) * s for p, (o, _), s in zip(point, origin, steps))


def _span(inner: Box, outer: Box) -> tuple[int, int]:
    """First and one-past-last flat element index of ``inner`` inside a row-major ``outer``."""
    steps = strides(box_shape(outer))
    first = _flat([a for a, _ in inner], outer, steps)
    last = _flat([b - 1 for _, b in inner], outer, steps)
    return first, last + 1


def _contiguous(inner: Box, outer: Box) -> bool:
    first, end = _span(inner, outer)
    return end - first == box_size(inner)


def _stored_pieces(index: CheckpointIndex, entry: TensorEntry, want_box: Box):
    """(stored entry, its box) pairs that intersect ``want_box``; checks slices like TF (inside
    the shape, no overlaps: ``CheckpointIndex.partition``) and that they cover the region."""
    if not entry.slices:
        yield entry, tuple((0, d) for d in entry.shape)
        return
    covered = 0
    for box, extents in zip(index.partition(entry), entry.slices):
        part = intersect(box, want_box)
        if part is not None:
            covered += box_size(part)
            yield index.slice_entry(entry.name, extents), box
    if covered != box_size(want_box):
        raise CorruptCheckpointError(
            f"{index.prefix}: does not have sufficient slices for partitioned tensor "
            f"{entry.name!r} to restore region {list(want_box)}"
        )


def _check_size(index: CheckpointIndex, stored: TensorEntry, box: Box) -> None:
    """What a stored entry claims, checked before any buffer is sized from it: its shape (that of
    its box), its byte size against its element count, its bytes inside its data file."""
    if stored.shape != box_shape(box):
        raise CorruptCheckpointError(
            f"{index.prefix}: slice entry of {stored.name!r} has shape {list(stored.shape)}, "
            f"expected {list(box_shape(box))}"
        )
    check_stored_size(stored.dtype, box_size(box), stored.size, stored.name, index.prefix)
    index.check_location(stored)


class _Range(NamedTuple):
    file: str
    start: int
    end: int
    kind: SegmentKind
    target: int
    offset: int
    entry: int
    entry_offset: int


def build_plan(wants: Sequence[Want] | Wants, options: PlanOptions | None = None) -> ReadPlan:
    options = options or PlanOptions()
    wants = Wants.of(wants)
    n = len(wants.names)
    outputs: list[Output | None] = [None] * n
    entries: list[StoredEntry] = []
    entry_ids: dict[tuple, int] = {}
    pieces: dict[int, list[tuple[int, Box]]] = {}  # entry id -> [(output, intersection box)]
    packed_rows = _small_whole_tensors(wants, options)  # [(index, rows, output ids)]
    taken = np.zeros(n, bool)
    for _, _, out_ids in packed_rows:
        taken[out_ids] = True

    for out_id in np.flatnonzero(~taken).tolist():
        index, name = wants.checkpoints[out_id], wants.names[out_id]
        entry = index.entry(name)
        if entry.dtype.enum == dtypes.VARIANT:
            raise UnsupportedCheckpointError(
                f"tensor {name!r} in {index.prefix} is a DT_VARIANT; it has no numpy value "
                "(read its raw records with CheckpointReader.get_variant_records)"
            )
        want_box = box_from_region(wants.regions[out_id], entry.shape)
        outputs[out_id] = Output(name, index.prefix, entry.dtype.name, want_box, box_shape(want_box))
        if box_size(want_box) == 0:
            continue
        for stored, box in _stored_pieces(index, entry, want_box):
            _check_size(index, stored, box)
            file = index.data_file(stored.shard_id)
            key = (file, stored.offset, stored.size, box)
            eid = entry_ids.get(key)
            if eid is None:
                eid = entry_ids[key] = len(entries)
                entries.append(
                    StoredEntry(
                        name,
                        file,
                        stored.offset,
                        stored.size,
                        stored.crc32c,
                        stored.dtype.name,
                        box,
                        index.big_endian,
                        False,
                    )
                )
                pieces[eid] = []
            pieces[eid].append((out_id, intersect(box, want_box)))

    staging: list[Staging] = []
    ranges: list[_Range] = []
    for eid, plist in pieces.items():
        ranges.extend(_plan_entry(eid, entries, plist, outputs, staging, options))
    small_bytes = sum(int(idx.columns().size[rows].sum()) for idx, rows, _ in packed_rows)
    chunk = _chunk_size(sum(r.end - r.start for r in ranges) + small_bytes, options)
    packed: list[Packed] = []
    for index, rows, out_ids in packed_rows:
        packed.extend(_pack(index, rows, out_ids, chunk, options))
    ranges.extend(_Range(p.file, p.start, p.start + p.size, PACKED, i, 0, -1, 0) for i, p in enumerate(packed))
    ranges = _split(ranges, chunk)
    requests = _coalesce(ranges, options, chunk)
    return ReadPlan(tuple(outputs), tuple(entries), tuple(staging), tuple(requests), options, tuple(packed))


def _small_whole_tensors(wants, options: PlanOptions):
    """Per checkpoint: index rows and output ids of wanted whole tensors that take the packed
    path (unpartitioned, fixed-width, native byte order, at most ``pack_bytes``, sane size),
    found with numpy over the index columns. Everything else takes the general path."""
    checkpoints, names = wants.checkpoints, wants.names
    distinct = wants.distinct_checkpoints()
    groups: dict[int, tuple] = {}
    if len(distinct) == 1 and wants.all_whole():  # the common case: no loop at all
        groups[0] = (distinct[0], names, range(len(names)))
    else:
        for i in [i for i, r in enumerate(wants.regions) if r is None]:
            g = groups.get(id(checkpoints[i]))
            if g is None:
                g = groups[id(checkpoints[i])] = (checkpoints[i], [], [])
            g[1].append(names[i])
            g[2].append(i)
    result = []
    for index, names, out_ids in groups.values():
        if index.big_endian:
            continue
        cols = index.columns()
        names = names if isinstance(names, list) else list(names)
        out_ids = (
            np.asarray(out_ids, np.int64)
            if not isinstance(out_ids, range)
            else np.arange(out_ids.start, out_ids.stop, dtype=np.int64)
        )
        every = len(names) == len(cols.names) and names == cols.names
        if every:
            # every tensor in index order (a whole-checkpoint restore): a slice, so that the
            # columns below are views rather than 10^5-row copies (each a fresh allocation that
            # a new process pays for in page faults)
            rows = slice(None)
        else:
            rows = index.rows_of(names)
            found = rows >= 0
            rows = np.where(found, rows, 0)
        ok = cols.size[rows] <= options.pack_bytes
        ok &= cols.expected_size[rows] == cols.size[rows]
        ok &= ~cols.sliced[rows]
        if not every:
            ok &= found
        # the rest gets the general path's named error
        if every and ok.all():
            ok = index.rows_in_files(rows)
            if ok.all():
                result.append((index, rows, out_ids))
                continue
        else:
            ok[ok] = index.rows_in_files(np.flatnonzero(ok) if every else rows[ok])
        if every:  # some tensors take the general path: the packed ones as index rows
            rows = np.arange(len(names), dtype=np.int64)
        result.append((index, rows[ok], out_ids[ok]))
    return result


def _pack(
    index: CheckpointIndex, rows: np.ndarray | slice, out_ids: np.ndarray, chunk: int, options: PlanOptions
) -> list[Packed]:
    """Group small tensors by file position into buffers of about ``chunk`` bytes, splitting at
    gaps wider than ``max_gap_bytes`` (vectorized: no Python work per tensor but the shapes).
    ``rows``: index rows, or a slice of them in order (the columns are then used as views)."""
    if not len(out_ids):
        return []
    cols = index.columns()
    shard, off = cols.shard[rows], cols.offset[rows]
    one_file = shard.min() == shard.max()
    if not (one_file and bool((off[1:] >= off[:-1]).all())):  # not yet in file order
        order = np.lexsort((off, shard))
        rows = (np.arange(len(out_ids), dtype=np.int64) if isinstance(rows, slice) else rows)[order]
        out_ids, shard, off = out_ids[order], shard[order], off[order]
    size = cols.size[rows]
    end = off + size
    reach = np.maximum.accumulate(end)  # the furthest byte read so far
    reach += options.max_gap_bytes
    new = np.ones(len(out_ids), bool)
    np.greater(off[1:], reach[:-1], out=new[1:])
    del reach
    if not one_file:
        new[1:] |= shard[1:] != shard[:-1]
    part = np.cumsum(size)
    part -= size  # bytes before each tensor
    starts = np.flatnonzero(new)
    if len(starts) > 1:  # counted from the start of each run
        part -= np.repeat(part[starts], np.diff(np.append(starts, len(part))))
    part //= max(chunk, 1)
    new[1:] |= part[1:] != part[:-1]
    del part
    bounds = np.append(np.flatnonzero(new), len(out_ids))
    shapes, crcs, kinds, enums = (c[rows] for c in (cols.shapes, cols.crc, cols.kind, cols.dtype))
    groups = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        start = int(off[a])
        groups.append(
            Packed(
                index.data_file(int(shard[a])),
                start,
                int(end[a:b].max()) - start,
                out_ids[a:b],
                off[a:b] - start,
                size[a:b],
                crcs[a:b],
                enums[a:b],
                shapes[a:b],
                kinds[a:b],  # the index's (dtype, shape) class ids
            )
        )
    return groups


def _plan_entry(eid, entries, plist, outputs, staging, options) -> list[_Range]:
    """The ranges that read stored entry ``eid``'s pieces ``plist`` ([(output, box)]) and, with
    ``options.verify``, the rest of the entry as checksum-only ranges (what TF reads for a slice:
    the whole stored entry, since its CRC32C covers all of it)."""
    e = entries[eid]
    dt = dtypes.BY_NAME[e.dtype]
    if not dt.fixed_width or e.big_endian:
        # strings must be decoded whole; foreign byte order is converted while copying out
        entries[eid] = e._replace(verify=True)
        staging.append(Staging(eid, 0, e.size, tuple(Copy(o, box) for o, box in plist)))
        return [_Range(e.file, e.offset, e.offset + e.size, STAGED, len(staging) - 1, 0, eid, 0)]
    ranges = _piece_ranges(eid, e, dt.itemsize, plist, outputs, staging, options)
    rest = _uncovered(ranges, e)
    if rest and options.verify:
        ranges.extend(_Range(e.file, e.offset + a, e.offset + b, SKIP, -1, 0, eid, a) for a, b in rest)
    entries[eid] = e._replace(verify=not rest or options.verify)
    return ranges


def _piece_ranges(eid, e, item, plist, outputs, staging, options) -> list[_Range]:
    """The ranges that read exactly the bytes the pieces need (a non-contiguous piece: the rows
    that cover it, into staging)."""
    spans = []
    for out_id, box in plist:
        first, end = _span(box, e.box)
        spans.append((first * item, end * item, out_id, box))
    spans.sort()
    if any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)):
        # several outputs need the same bytes: read them once into one buffer, copy out to each
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
        staging.append(Staging(eid, lo, hi - lo, tuple(Copy(o, box) for _, _, o, box in spans)))
        return [_Range(e.file, e.offset + lo, e.offset + hi, STAGED, len(staging) - 1, 0, eid, lo)]
    ranges = []
    for a, b, out_id, box in spans:
        out = outputs[out_id]
        if _contiguous(box, e.box) and _contiguous(box, out.box):
            dest = _span(box, out.box)[0] * item
            ranges.append(_Range(e.file, e.offset + a, e.offset + b, DIRECT, out_id, dest, eid, a))
        else:
            for sub in _cut_box(box, e.box, item, options.max_request_bytes):
                sa, sb = (x * item for x in _span(sub, e.box))
                staging.append(Staging(eid, sa, sb - sa, (Copy(out_id, sub),)))
                ranges.append(_Range(e.file, e.offset + sa, e.offset + sb, STAGED, len(staging) - 1, 0, eid, sa))
    return ranges


def _uncovered(ranges: list[_Range], e: StoredEntry) -> list[tuple[int, int]]:
    """Byte runs [a, b) of entry ``e`` that none of its (non-overlapping) ``ranges`` reads."""
    out = []
    pos = 0
    for a, n in sorted((r.entry_offset, r.end - r.start) for r in ranges):
        if a > pos:
            out.append((pos, a))
        pos = a + n
    if pos < e.size:
        out.append((pos, e.size))
    return out


def _cut_box(box: Box, outer: Box, item: int, limit: int) -> list[Box]:
    """Cut a non-contiguous box along its leading dimension so each piece's covering byte range
    stays under ``limit`` (a column block of a huge tensor must not need one huge buffer)."""
    first, end = _span(box, outer)
    if (end - first) * item <= limit:
        return [box]
    for d, (a, b) in enumerate(box):  # noqa: B007 - d, a, b are used after the loop
        if b - a > 1:
            break
    else:
        return [box]
    n = b - a
    per_index = max(1, (end - first) * item // n)
    step = max(1, limit // per_index)
    out = []
    for s in range(a, b, step):
        sub = box[:d] + ((s, min(b, s + step)),) + box[d + 1 :]
        out.extend(_cut_box(sub, outer, item, limit) if step == 1 and d + 1 < len(box) else [sub])
    return out


def _chunk_size(total: int, options: PlanOptions) -> int:
    """Request size: at most ``max_request_bytes``, small enough that every worker gets about
    four requests, but not below ``min_request_bytes``."""
    chunk = options.max_request_bytes
    if options.workers > 1 and total:
        chunk = max(options.min_request_bytes, min(chunk, -(-total // (4 * options.workers))))
    return min(chunk, options.max_request_bytes)


def _split(ranges: list[_Range], chunk: int) -> list[_Range]:
    """Split ranges longer than ``chunk`` (packed groups are already at most that long)."""
    out = []
    for r in ranges:
        n = r.end - r.start
        if n <= chunk:
            out.append(r)
            continue
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            offset = r.offset + a if r.kind != SKIP else 0  # a checksum-only range lands nowhere
            out.append(r._replace(start=r.start + a, end=r.start + b, offset=offset, entry_offset=r.entry_offset + a))
    return out


def _coalesce(ranges: list[_Range], options: PlanOptions, chunk: int) -> list[ReadRequest]:
    """Join ranges of one file separated by at most ``max_gap_bytes`` into requests of at most
    ``chunk`` bytes (the balanced size ``_split`` cut to)."""
    ranges.sort(key=lambda r: (r.file, r.start))
    requests: list[ReadRequest] = []
    cur: list[_Range] = []

    def flush():
        if not cur:
            return
        segs = []
        pos = cur[0].start
        for r in cur:
            if r.start > pos:
                segs.append(Segment(r.start - pos, SKIP, -1, 0, -1, 0))
            segs.append(Segment(r.end - r.start, r.kind, r.target, r.offset, r.entry, r.entry_offset))
            pos = r.end
        requests.append(ReadRequest(cur[0].file, cur[0].start, pos, tuple(segs)))
        cur.clear()

    for r in ranges:
        if cur and (
            r.file != cur[-1].file
            or r.start < cur[-1].end
            or r.start - cur[-1].end > options.max_gap_bytes
            or r.end - cur[0].start > chunk
        ):
            flush()
        cur.append(r)
    flush()
    return requests
