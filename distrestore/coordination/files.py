"""The data files a coordinator serves: file ids, their entries, and what a read must check.

Every checkpoint a coordinator opens gets a block of consecutive file ids (one per data file),
so positions (``ranges.position``) name bytes of any of them. ``FileTable`` extends byte ranges
to whole entries (with ``verify``, every byte handed out is covered by a checked CRC32C), finds
the entries a piece cuts through, and describes what one read task must check
(:class:`ReadOrder`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..index import CheckpointIndex
from . import columns
from .entries import FIXED, STRINGS, FileEntries, file_entries
from .ranges import MAX_FILE_BYTES, Ranges, file_of, merge, offset_of, position


class CheckpointInfo(NamedTuple):
    """A served checkpoint: its id, prefix, and file ids ``first_file .. first_file + num_files``."""

    id: int
    prefix: str
    first_file: int
    num_files: int


class ReadOrder(NamedTuple):
    """One read task: bytes ``[start, end)`` of ``path`` (checkpoint ``checkpoint``), checked as
    it reads: the entries wholly inside (offsets relative to ``start``; ``inside_rows`` names
    them in the file's entry table), and the CRC32C of every part of an entry that the range
    cuts through (``part_lo``/``part_hi``, relative to ``start``; ``part_rows``)."""

    piece: int
    checkpoint: int
    path: str
    start: int
    end: int
    node: str
    inside_rows: np.ndarray
    inside_offset: np.ndarray
    inside_size: np.ndarray
    inside_crc: np.ndarray
    inside_check: np.ndarray
    inside_count: np.ndarray
    part_rows: np.ndarray
    part_lo: np.ndarray
    part_hi: np.ndarray


_INSIDE = ("inside_rows", "inside_offset", "inside_size", "inside_crc", "inside_check", "inside_count")
_PART = ("part_rows", "part_lo", "part_hi")


def pack_orders(orders: list[ReadOrder]) -> tuple:
    """Orders as a few columns: what a read task's arguments cost to send is then a few arrays,
    not nine per piece (pickling small numpy arrays costs microseconds each), made small
    (``columns``): a task checking 10^4 small entries travels inside the task, under Ray's
    100 KB limit, with about 4 bytes per entry (its CRC32C)."""
    if not orders:
        return [], "", np.empty((0, 7), np.int64), np.empty((0, 2), np.int64), [], []
    paths = list(dict.fromkeys(o.path for o in orders))
    where = {p: i for i, p in enumerate(paths)}
    counts = np.array([(len(o.inside_rows), len(o.part_rows)) for o in orders], np.int64).reshape(-1, 2)
    rows, offset, size, crc, check, count = (np.concatenate([getattr(o, k) for o in orders]) for k in _INSIDE)
    row_firsts, rows = columns.runs_residual(rows, np.ones(len(rows), np.int64), counts[:, 0])
    offset_firsts, offset = columns.runs_residual(offset, size, counts[:, 0])
    head = np.array([(o.piece, o.checkpoint, where[o.path], o.start, o.end) for o in orders], np.int64).reshape(-1, 5)
    head = np.column_stack([head, row_firsts, offset_firsts])
    inside = [columns.encode(x) for x in (rows, offset, size, crc, check, count)]
    part = [columns.encode(np.concatenate([getattr(o, k) for o in orders])) for k in _PART]
    return paths, orders[0].node, head, counts, inside, part


def unpack_orders(packed: tuple) -> list[ReadOrder]:
    """``pack_orders``'s orders again (their arrays are views of the columns)."""
    paths, node, head, counts, inside, part = packed
    if not len(head):
        return []
    rows, offset, size, crc, check, count = (columns.decode(c) for c in inside)
    rows = columns.runs_restore(head[:, 5], rows, np.ones(len(rows), np.int64), counts[:, 0])
    offset = columns.runs_restore(head[:, 6], offset, size, counts[:, 0])
    inside = (rows, offset, size, crc, check, count)
    part = [columns.decode(c) for c in part]
    bounds_in = np.concatenate([[0], np.cumsum(counts[:, 0])]).tolist()
    bounds_part = np.concatenate([[0], np.cumsum(counts[:, 1])]).tolist()
    out = []
    for k, (piece, ckpt, path, start, end) in enumerate(head[:, :5].tolist()):
        a, b = bounds_in[k], bounds_in[k + 1]
        c, d = bounds_part[k], bounds_part[k + 1]
        out.append(
            ReadOrder(piece, ckpt, paths[path], start, end, node, *(x[a:b] for x in inside), *(x[c:d] for x in part))
        )
    return out


class FileTable:
    """Files of every checkpoint served, by file id."""

    def __init__(self):
        self.checkpoints: list[CheckpointInfo] = []
        self.entries: list[FileEntries] = []
        self.checkpoint_of: list[int] = []
        self._atoms: list[Ranges] = []
        self.atoms = Ranges.empty()  # string entries: pieces are never cut inside one

    def add(self, prefix: str, index: CheckpointIndex) -> CheckpointInfo:
        tables = file_entries(index)
        info = CheckpointInfo(len(self.checkpoints), prefix, len(self.entries), len(tables))
        for k, t in enumerate(tables):
            if len(t.offset) and int(t.end.max()) >= MAX_FILE_BYTES:
                raise ValueError(f"{t.path}: data files of 2 TiB or more cannot be served")
            strings = t.check == STRINGS
            f = info.first_file + k
            self._atoms.append(Ranges(position(f, t.offset[strings]), position(f, t.end[strings])))
        self.entries.extend(tables)
        self.checkpoint_of.extend([info.id] * len(tables))
        self.checkpoints.append(info)
        self.atoms = merge(Ranges.concat(self._atoms))
        return info

    def path(self, file: int) -> str:
        return self.entries[file].path

    def _by_file(self, r: Ranges):
        """(file id, slice of ``r``) for each file ``r`` (sorted) touches."""
        files = file_of(r.start)
        cuts = np.flatnonzero(np.diff(files)) + 1
        bounds = [0, *cuts.tolist(), len(files)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                yield int(files[a]), slice(a, b)

    def extend(self, r: Ranges) -> Ranges:
        """``r`` (merged) grown to whole stored entries, merged."""
        return merge(self._grow(r))

    def extend_each(self, parts: list[Ranges]) -> list[Ranges]:
        """``[extend(r) for r in parts]``, in one pass over the entry tables (a batch of many
        small registrations costs a few numpy calls, not a few per registration)."""
        if len(parts) <= 1:
            return [self.extend(r) for r in parts]
        cat = Ranges.concat(parts)
        order = np.argsort(cat.start, kind="stable")
        grown = self._grow(Ranges(cat.start[order], cat.end[order]))
        start, end = np.empty_like(cat.start), np.empty_like(cat.end)
        start[order], end[order] = grown.start, grown.end
        out, a = [], 0
        for r in parts:
            b = a + len(r)
            s, e = start[a:b], end[a:b]
            # still disjoint (ranges of a merged input stay sorted): nothing to merge
            out.append(Ranges(s, e) if b - a < 2 or (s[1:] > e[:-1]).all() else merge(Ranges(s, e)))
            a = b
        return out

    def _grow(self, r: Ranges) -> Ranges:
        """Each range of ``r`` (sorted by file) grown to the whole entries it touches; not merged."""
        starts, ends = r.start.copy(), r.end.copy()
        for f, sl in self._by_file(r):
            t = self.entries[f]
            if not len(t.offset):
                continue
            lo, hi = offset_of(starts[sl]), offset_of(ends[sl])
            a = np.searchsorted(t.end, lo, side="right")
            b = np.searchsorted(t.offset, hi, side="left")
            hit = a < b
            lo = np.where(hit, np.minimum(lo, t.offset[np.minimum(a, len(t.offset) - 1)]), lo)
            hi = np.where(hit, np.maximum(hi, t.end[np.maximum(b - 1, 0)]), hi)
            starts[sl], ends[sl] = position(f, lo), position(f, hi)
        return Ranges(starts, ends)

    def edges(self, start: int, end: int) -> tuple[tuple[int, int], ...]:
        """``(file, row)`` of the fixed-width entries that bytes ``[start, end)`` cut through
        (they hold bytes on both sides of a bound)."""
        f = int(file_of(start))
        t = self.entries[f]
        lo, hi = int(offset_of(start)), int(offset_of(end))
        a, b = t.around(lo, hi)
        out = []
        for row in {a, b - 1} if b > a else ():
            o, e = int(t.offset[row]), int(t.offset[row] + t.size[row])
            if t.check[row] == FIXED and (o < lo or e > hi):
                out.append((f, row))
        return tuple(sorted(out))

    def edge_span(self, file: int, row: int) -> tuple[int, int, int]:
        """(position of the entry's first byte, its size, its masked CRC)."""
        t = self.entries[file]
        return int(position(file, t.offset[row])), int(t.size[row]), int(t.crc[row])

    def order(self, piece: int, start: int, end: int, node: str) -> ReadOrder:
        f = int(file_of(start))
        t = self.entries[f]
        lo, hi = int(offset_of(start)), int(offset_of(end))
        a, b = t.around(lo, hi)
        rows = np.arange(a, b, dtype=np.int64)
        o, e = t.offset[a:b], t.end[a:b]
        inside = (o >= lo) & (e <= hi) & (t.check[a:b] != 2)
        part = ~inside & (t.check[a:b] == FIXED)
        return ReadOrder(
            piece,
            self.checkpoint_of[f],
            t.path,
            lo,
            hi,
            node,
            rows[inside],
            o[inside] - lo,
            t.size[a:b][inside],
            t.crc[a:b][inside],
            t.check[a:b][inside],
            t.count[a:b][inside],
            rows[part],
            np.maximum(o[part], lo) - lo,
            np.minimum(e[part], hi) - lo,
        )

    def describe(self, file: int, row: int) -> str:
        return self.entries[file].describe(row)

    def describe_range(self, start: int, end: int, limit: int = 3) -> str:
        """The tensors bytes ``[start, end)`` hold, for messages."""
        f = int(file_of(start))
        t = self.entries[f]
        lo, hi = int(offset_of(start)), int(offset_of(end))
        a, b = t.around(lo, hi)
        names = [repr(t.labels[i]) for i in range(a, min(b, a + limit))]
        more = f" and {b - a - limit} more" if b - a > limit else ""
        return f"{t.path} bytes [{lo}, {hi}) (tensors {', '.join(names)}{more})"
