"""The stored entries of a checkpoint's data files, as sorted columns: what a coordinator needs
to extend reads to whole entries and to check each entry's CRC32C.

TF's checksum covers a whole stored entry (a tensor, or one slice of a partitioned tensor). A
fixed-width entry's CRC32C is the checksum of its bytes, so the CRCs of its pieces can be
combined; a string entry's is computed over its element lengths re-encoded, so it is checked
whole (``check == STRINGS``, with its element ``count``), and a variant's per element
(``check == UNCHECKED``: nothing here reads variants as tensors).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import CorruptCheckpointError
from ..format import dtypes
from ..format.slices import to_box
from ..index import CheckpointIndex

FIXED, STRINGS, UNCHECKED = 0, 1, 2


class FileEntries(NamedTuple):
    """Entries of one data file, sorted by offset, disjoint. ``labels[i]`` names entry ``i``
    for messages (the tensor name, with the slice for a slice entry)."""

    path: str
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    end: np.ndarray  # int64: offset + size
    crc: np.ndarray  # uint32, masked as stored
    check: np.ndarray  # int8: FIXED, STRINGS or UNCHECKED
    count: np.ndarray  # int64: elements (what a string entry's check needs)
    labels: list[str]

    def around(self, start: int, end: int) -> tuple[int, int]:
        """Rows ``[a, b)`` of the entries that overlap bytes ``[start, end)`` of the file."""
        a = int(np.searchsorted(self.end, start, side="right"))
        b = int(np.searchsorted(self.offset, end, side="left"))
        return a, max(a, b)

    def describe(self, row: int) -> str:
        o, n = int(self.offset[row]), int(self.size[row])
        return f"tensor {self.labels[row]!r}: {self.path} bytes [{o}, {o + n})"


def file_entries(index: CheckpointIndex) -> list[FileEntries]:
    """One ``FileEntries`` per data file of ``index`` (entries of zero bytes left out).
    Raises ``CorruptCheckpointError`` where two entries of a file share some bytes without
    being the same bytes (identical duplicates are kept once)."""
    cols = index.columns()
    rows = np.flatnonzero(~cols.sliced & (cols.size > 0))
    shard = [cols.shard[rows]]
    offset = [cols.offset[rows]]
    size = [cols.size[rows]]
    crc = [cols.crc[rows]]
    enums = cols.dtype[rows]
    check = np.full(len(rows), FIXED, np.int8)
    count = np.zeros(len(rows), np.int64)
    for enum in np.unique(enums).tolist():
        dt = dtypes.from_enum(int(enum))
        if not dt.fixed_width:
            sel = np.flatnonzero(enums == enum)
            check[sel] = STRINGS if dt.is_string else UNCHECKED
            count[sel] = [math.prod(s) for s in cols.shapes[rows[sel]]]
    checks, counts = [check], [count]
    labels = [cols.names[i] for i in rows.tolist()]
    extra = []  # slices of partitioned tensors: their own hidden entries
    for e in index.entries.partitioned():
        for s in e.slices:
            se = index.slice_entry(e.name, s)
            if se.size > 0:
                box = to_box(s, e.shape)
                kind = FIXED if e.dtype.fixed_width else STRINGS if e.dtype.is_string else UNCHECKED
                extra.append((se.shard_id, se.offset, se.size, se.crc32c, kind, math.prod(b - a for a, b in box)))
                labels.append(f"{e.name} slice {[list(b) for b in box]}")
    if extra:
        cols_extra = np.array(extra, dtype=np.int64).T
        shard.append(cols_extra[0])
        offset.append(cols_extra[1])
        size.append(cols_extra[2])
        crc.append(cols_extra[3].astype(np.uint32))
        checks.append(cols_extra[4].astype(np.int8))
        counts.append(cols_extra[5])
    shard, offset, size = np.concatenate(shard), np.concatenate(offset), np.concatenate(size)
    crc, check, count = np.concatenate(crc), np.concatenate(checks), np.concatenate(counts)
    order = np.lexsort((size, offset, shard))
    shard, offset, size, crc, check, count = (a[order] for a in (shard, offset, size, crc, check, count))
    labels = [labels[i] for i in order.tolist()]
    files = index.data_files()
    bounds = np.searchsorted(shard, np.arange(len(files) + 1))
    out = []
    for f, path in enumerate(files):
        a, b = int(bounds[f]), int(bounds[f + 1])
        o, n = offset[a:b], size[a:b]
        same = np.zeros(b - a, bool)
        same[1:] = (o[1:] == o[:-1]) & (n[1:] == n[:-1])
        keep = np.flatnonzero(~same)
        o, n = o[keep], n[keep]
        if len(o) > 1 and (o[1:] < (o + n)[:-1]).any():
            i = int(np.flatnonzero(o[1:] < (o + n)[:-1])[0])
            raise CorruptCheckpointError(
                f"{index.prefix}.index: entries {labels[a + keep[i]]!r} and {labels[a + keep[i + 1]]!r} "
                f"share bytes of {path} without being the same bytes"
            )
        out.append(
            FileEntries(
                path,
                o,
                n,
                o + n,
                crc[a:b][keep],
                check[a:b][keep],
                count[a:b][keep],
                [labels[a + i] for i in keep.tolist()],
            )
        )
    return out
