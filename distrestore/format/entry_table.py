"""An index's tensor entries as numpy columns, decoded in bulk, with a lazy name -> entry mapping.

A checkpoint of 10^5 small tensors spends most of its open time making per-entry Python objects
that a restore never looks at: the planner works on columns (numpy), and only the names must be
Python strings. So the index blocks are decoded straight into columns, and ``EntryTable`` makes a
``TensorEntry`` only when one is asked for. A *kind* numbers the distinct (dtype, shape) pairs of
one index: most checkpoints have few, and they are decoded once each.

This module is the facade of the compiled ``distrestore._native._index_decode`` (``native``; None
where it is not built, and tests set it to None): ``py_decode_columns`` is its pure-Python twin,
with the same verdict on every input (the same columns, or the same error class). A name that
appears twice resolves to its first entry, as TF's lookup finds it.
"""

from __future__ import annotations

from array import array
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from itertools import repeat
from typing import NamedTuple

import numpy as np

from .._native import index_decode as native  # the C block loop; None where no compiler built it
from ..errors import CorruptCheckpointError, DistRestoreError
from . import dtypes
from .checks import expected_size
from .messages import TensorEntry, decode_entry
from .sstable import entries_limit, iter_block


class IndexColumns(NamedTuple):
    """Entry fields as arrays aligned with ``names`` (``EntryTable.rows_of`` maps names to rows)."""

    names: list[str]
    dtype: np.ndarray  # int16 enum
    shard: np.ndarray  # int64
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    crc: np.ndarray  # uint32, masked
    sliced: np.ndarray  # bool
    expected_size: np.ndarray  # int64: elements x itemsize (-1 for strings and variants, -2 for invalid shapes)
    kind: np.ndarray  # int64: equal exactly for entries of equal dtype and shape
    shapes: np.ndarray  # object: the shape tuple of each entry


class _Kinds:
    """The distinct (dtype, shape) pairs of one index, numbered in order of appearance."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}
        self.dtypes: list[dtypes.DType] = []
        self.shapes: list[tuple[int, ...]] = []

    def id_of(self, dtype: dtypes.DType, shape: tuple[int, ...]) -> int:
        kid = self.ids.get((dtype.enum, shape))
        if kid is None:
            kid = self.ids[(dtype.enum, shape)] = len(self.dtypes)
            self.dtypes.append(dtype)
            self.shapes.append(shape)
        return kid


class _Rows:
    """Columns being filled one entry at a time (the pure-Python decoder, and re-sorting)."""

    def __init__(self, kinds: _Kinds):
        self.kinds = kinds
        self.names: list[str] = []
        self.shard, self.offset, self.size = array("q"), array("q"), array("q")
        self.crc, self.kind = array("I"), array("i")
        self.exact: dict[int, TensorEntry] = {}

    def add(self, e: TensorEntry) -> None:
        if e.slices:  # what columns cannot say
            self.exact[len(self.names)] = e
        self.names.append(e.name)
        self.kind.append(self.kinds.id_of(e.dtype, e.shape))
        self.shard.append(e.shard_id)
        self.offset.append(e.offset)
        self.size.append(e.size)
        self.crc.append(e.crc32c)

    def table(self, increasing: bool = True) -> EntryTable:
        return EntryTable.build(
            self.names, self.kinds, self.shard, self.offset, self.size, self.crc, self.kind, self.exact, increasing
        )


def decode_table(blocks: list[bytes], path: str) -> tuple[bytes | None, dict[bytes, bytes], EntryTable]:
    """Decode an index's data blocks: (raw header value or None, hidden slice entries by encoded
    key, the table of tensor entries in index order); the first of repeated keys wins."""
    if native is None:
        return py_decode_columns(blocks, path)
    kinds = _Kinds()
    head_ids: dict[bytes, int] = {}
    exact: dict[int, TensorEntry] = {}

    def head_id(head: bytes, name: str) -> int:
        e = decode_entry(name, head)  # names the tensor in its error, e.g. an unknown dtype
        head_ids[head] = kid = kinds.id_of(e.dtype, e.shape)
        return kid

    def fallback(row: int, name: str, value: bytes) -> tuple[int, int, int, int, int]:
        e = decode_entry(name, value)
        if e.slices:
            exact[row] = e
        return kinds.id_of(e.dtype, e.shape), e.shard_id, e.offset, e.size, e.crc32c

    limits = [entries_limit(b, path) for b in blocks]
    try:
        names, header, hidden, shard, offset, size, crc, kind, increasing = native.decode_columns(
            blocks, limits, head_ids, head_id, fallback
        )
    except DistRestoreError:  # ours, raised by the callbacks: already precise
        raise
    except ValueError as e:  # the C loop's own complaints about a block's framing
        raise CorruptCheckpointError(f"{path}: {e}") from None
    table = EntryTable.build(names, kinds, shard, offset, size, crc, kind, exact, increasing)
    return header, hidden, table


def py_decode_columns(blocks: list[bytes], path: str):
    """The pure-Python twin of the C loop (``decode_table`` without the native module)."""
    header = None
    hidden: dict[bytes, bytes] = {}
    rows = _Rows(_Kinds())
    prev = None
    increasing = True
    for block in blocks:
        for key, value in iter_block(block, path):
            if prev is not None and key <= prev:
                increasing = False
            prev = key
            if not key:
                if header is None:
                    header = value
            elif key[0] == 0:
                hidden.setdefault(key, value)
            else:
                rows.add(decode_entry(key.decode("utf-8", "surrogateescape"), value))
    return header, hidden, rows.table(increasing)


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer column: ``np.unique`` without its first call's
    import of ``numpy.ma`` (16 ms, and a garbage collection, in a fresh process's first restore)."""
    s = np.sort(values)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) else s


class EntryTable(Mapping):
    """``name -> TensorEntry`` over an index's columns, in index (key) order; entries are made
    when asked for, the name -> row map when first needed."""

    def __init__(self, columns: IndexColumns, kind_dtypes: list[dtypes.DType], exact: dict[int, TensorEntry]):
        self.columns = columns
        self._kind_dtypes = kind_dtypes
        self._exact = exact  # rows the columns cannot rebuild: partitioned entries
        self._position: dict[str, int] | None = None

    @classmethod
    def build(cls, names, kinds: _Kinds, shard, offset, size, crc, kind, exact, increasing: bool = True) -> EntryTable:
        """Columns from decoded rows; unless the keys were strictly increasing, repeated names
        are dropped but for their first row."""
        kind = np.frombuffer(kind, np.int32).astype(np.int64)
        shard, offset, size = (np.frombuffer(c, np.int64) for c in (shard, offset, size))
        crc = np.frombuffer(crc, np.uint32)
        if not increasing and len(set(names)) < len(names):
            first = dict(zip(reversed(names), range(len(names) - 1, -1, -1)))  # name -> first row
            keep = np.array(sorted(first.values()), np.int64)
            new_row = {int(r): i for i, r in enumerate(keep.tolist())}
            exact = {new_row[r]: e for r, e in exact.items() if r in new_row}
            names = [names[r] for r in keep.tolist()]
            kind, shard, offset, size, crc = (c[keep] for c in (kind, shard, offset, size, crc))
        n = len(names)
        k_enum = np.array([d.enum for d in kinds.dtypes], np.int16)
        k_expected = np.array([expected_size(d, s) for d, s in zip(kinds.dtypes, kinds.shapes)], np.int64)
        k_shapes = np.empty(len(kinds.shapes), object)
        for i, shape in enumerate(kinds.shapes):  # one by one: numpy would unpack tuples
            k_shapes[i] = shape
        sliced = np.zeros(n, bool)
        sliced[list(exact)] = True
        cols = IndexColumns(
            names, k_enum[kind], shard, offset, size, crc, sliced, k_expected[kind], kind, k_shapes[kind]
        )
        return cls(cols, kinds.dtypes, exact)

    @classmethod
    def from_entries(cls, entries: list[TensorEntry]) -> EntryTable:
        rows = _Rows(_Kinds())
        for e in entries:
            rows.add(e)
        return rows.table()

    # -- rows ----------------------------------------------------------------------------------

    def _rows(self) -> dict[str, int]:
        if self._position is None:
            names = self.columns.names
            self._position = dict(zip(names, range(len(names))))
        return self._position

    def rows_of(self, names: list[str]) -> np.ndarray:
        """Row of each name (-1 where absent); no name -> row map is built when the names are
        simply every entry in index order."""
        all_names = self.columns.names
        if len(names) == len(all_names) and names == all_names:
            return np.arange(len(names), dtype=np.int64)
        return np.fromiter(map(self._rows().get, names, repeat(-1)), np.int64, len(names))

    def at(self, row: int) -> TensorEntry:
        e = self._exact.get(row)
        if e is not None:
            return e
        c = self.columns
        return TensorEntry(
            c.names[row],
            self._kind_dtypes[c.kind[row]],
            c.shapes[row],
            int(c.shard[row]),
            int(c.offset[row]),
            int(c.size[row]),
            int(c.crc[row]),
        )

    def partitioned(self) -> list[TensorEntry]:
        return [self._exact[r] for r in sorted(self._exact)]

    # -- Mapping ---------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> TensorEntry:
        return self.at(self._rows()[name])

    def __contains__(self, name) -> bool:
        return name in self._rows()

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns.names)

    def __len__(self) -> int:
        return len(self.columns.names)

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    def __repr__(self) -> str:
        return f"EntryTable({len(self)} entries)"


class _Values(ValuesView):
    def __iter__(self):
        return map(self._mapping.at, range(len(self._mapping)))


class _Items(ItemsView):
    def __iter__(self):
        table = self._mapping
        return zip(table.columns.names, map(table.at, range(len(table))))
