"""A checkpoint's index, read once: prefix resolution, the entry table and its data files.

Resolution follows TF (``checkpoint_management.py``, ``checkpoint_utils.py``): a directory goes
through its ``checkpoint`` state file, anything else is a prefix whose ``.index`` must exist.
A SavedModel directory resolves to its ``variables/variables`` bundle, as ``Checkpoint.restore``
accepts it. A V1-format checkpoint (no ``.index``; the prefix itself is a table) is detected and
refused with a message saying so.
"""

from __future__ import annotations

import copy
import os
import struct
import warnings
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from ._gc import gc_paused
from .errors import (
    CheckpointNotFoundError,
    CheckpointPathError,
    CorruptCheckpointError,
    DistRestoreError,
    NoCheckpointInDirectoryError,
    StorageError,
    TensorNotFoundError,
    UnsupportedCheckpointError,
)
from .format import dtypes, sstable
from .format.checks import check_shape
from .format.entry_table import EntryTable, IndexColumns, decode_table, distinct
from .format.messages import BIG, BundleHeader, TensorEntry, decode_entry, decode_header
from .format.slices import Box, Extents, check_partition, slice_key
from .format.state import CheckpointState, parse_state
from .redact import redact_url
from .storage import Storage, bucket_of, deadline_at, join
from .storage.background import BackgroundSize

CONSUMER = 1  # the bundle format version this reader implements (TF's kTensorBundleVersion)


class CheckpointIndex:
    """The parsed ``.index`` of one bundle: header, public entries and hidden slice entries.

    Opening reads the index alone (one GET). What entries claim is checked where it is used:
    shapes when an entry is looked up, slices when a partitioned tensor is planned, locations
    against the data files' sizes, which are asked once per data file (one stat or HEAD each,
    when a plan or read first needs that file) and kept with the index."""

    def __init__(
        self,
        prefix: str,
        header: BundleHeader,
        entries: EntryTable,
        slice_entries: dict[bytes, bytes],
        storage: Storage,
        file_sizes: Mapping[int, int] | None = None,
    ):
        self.prefix = prefix
        self.header = header
        self.entries = entries  # a Mapping name -> TensorEntry, kept as columns
        self._slice_values = slice_entries  # encoded key -> raw BundleEntryProto, decoded on use
        self.storage = storage
        self._file_sizes = dict(file_sizes or {})  # shard id -> data file size, asked when first needed
        self._partitions: dict[str, tuple[Box, ...]] = {}  # name -> its checked slice boxes
        self._referenced: list[str] | None = None  # data_files(), made when first asked

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_bytes(
        cls, prefix: str, data: bytes, storage: Storage | None = None, *, file_sizes: Mapping[int, int] | None = None
    ) -> CheckpointIndex:
        """The index in ``data``; ``file_sizes``: data file sizes by shard id where they are known
        already (an index built in memory, files just written), so they are not asked."""
        path = prefix + ".index"
        try:
            with gc_paused():
                header_raw, hidden, entries = decode_table(list(sstable.read_blocks(data, path)), path)
            if header_raw is None:
                raise CorruptCheckpointError(f"{path}: the index has no header entry")
            header = decode_header(header_raw, path)
            _check_version(header, path)
            if hidden:
                # TF hides exactly the keys that re-encode a full entry's slices (BuildV2VarMaps)
                referenced = {slice_key(e.name, s) for e in entries.partitioned() for s in e.slices}
                extra = [
                    decode_entry(k.decode("utf-8", "surrogateescape"), hidden.pop(k))
                    for k in [k for k in hidden if k not in referenced]
                ]
                if extra:
                    entries = EntryTable.from_entries(
                        sorted([*entries.values(), *extra], key=lambda e: e.name.encode("utf-8", "surrogateescape"))
                    )
        except (IndexError, struct.error):
            raise CorruptCheckpointError(f"{path}: truncated index block entry") from None
        except OverflowError:  # a location field past 2^63: no real file is that large
            raise CorruptCheckpointError(f"{path}: an entry's shard, offset or size is out of range") from None
        except DistRestoreError as e:  # e.g. an unknown dtype, named by tensor: add the file
            if path in str(e):
                raise
            raise type(e)(f"{path}: {e}") from None
        return cls(prefix, header, entries, hidden, storage or Storage.for_url(prefix), file_sizes)

    @classmethod
    def open(cls, prefix: str, storage: Storage) -> CheckpointIndex:
        path = prefix + ".index"
        try:
            data = storage.read(path)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(f"checkpoint index not found: {path}") from None
        return cls.from_bytes(prefix, data, storage)

    # -- lookups ------------------------------------------------------------------------

    @property
    def big_endian(self) -> bool:
        return self.header.endianness == BIG

    def data_file(self, shard_id: int) -> str:
        """The name of data file ``shard_id`` (made on demand: a header may claim 2^31 shards)."""
        n = self.header.num_shards
        if not 0 <= shard_id < n:
            raise CorruptCheckpointError(f"{self.prefix}.index: shard id {shard_id} out of range for {n} shards")
        return f"{self.prefix}.data-{shard_id:05d}-of-{n:05d}"

    def data_files(self) -> list[str]:
        """The data files the entries refer to, in shard order: every file of a checkpoint TF
        wrote, and never the names of shards no entry uses, however many the header claims."""
        if self._referenced is None:
            cols = self.columns()
            shards = set(distinct(cols.shard[~cols.sliced]).tolist())
            for raw in self._slice_values.values():
                try:
                    shards.add(decode_entry("", raw).shard_id)
                except DistRestoreError:  # refused where that slice is read
                    pass
            self._referenced = [self.data_file(i) for i in sorted(shards) if 0 <= i < self.header.num_shards]
        return list(self._referenced)

    def with_storage(self, storage: Storage) -> CheckpointIndex:
        """This index read through ``storage`` (the same one with a call's limits): everything
        else is shared, the data file sizes it learns included."""
        view = copy.copy(self)
        view.storage = storage
        return view

    def data_file_size(self, shard_id: int) -> int:
        """Size of data file ``shard_id``, asked once (``Storage.size``) and kept."""
        size = self._file_sizes.get(shard_id)
        if size is None:
            size = self._file_sizes[shard_id] = self.storage.size(self.data_file(shard_id))
        return size

    def _sizes_of(self, shard_ids, reading=None) -> None:
        """Ask the sizes of several data files not known yet, concurrently where remote; a file
        that is missing stays unknown (the tensors in it then fail by name). ``reading(i)``: what
        a storage error (a deadline, say) asking file ``i`` names as read from it."""

        def ask(i: int) -> None:
            try:
                self.data_file_size(i)
            except CheckpointNotFoundError:
                pass
            except StorageError as e:
                if reading is None:
                    raise
                raise type(e)(f"{e} (reading {reading(i)})") from e

        missing = [i for i in shard_ids if i not in self._file_sizes]
        if len(missing) > 1 and not self.storage.local:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(16, len(missing))) as pool:
                list(pool.map(ask, missing))
        else:
            for i in missing:
                ask(i)

    def check_location(self, entry: TensorEntry) -> None:
        """The entry's bytes lie inside its data file (a StorageError, as for a truncated file,
        naming file, byte range and tensor, where they do not)."""
        file = self.data_file(entry.shard_id)
        try:
            size = self.data_file_size(entry.shard_id)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(f"file not found: {file} (reading tensors {entry.name!r})") from None
        except StorageError as e:  # e.g. the call's deadline, while asking the file's size
            where = f"bytes [{entry.offset}, {entry.offset + entry.size}) (tensors {entry.name!r})"
            raise type(e)(f"{e} (reading {where})") from e
        if entry.offset + entry.size > size:
            raise StorageError(
                f"{file} bytes [{entry.offset}, {entry.offset + entry.size}): file is shorter than the checkpoint "
                f"index says (it has {size} bytes); the data file is truncated or the index is corrupt "
                f"(reading tensors {entry.name!r})"
            )

    def rows_in_files(self, rows: np.ndarray | slice) -> np.ndarray:
        """For rows of ``columns()`` (an index array, or a slice of them in order): True where
        the row's shard exists in the header and its bytes lie inside that data file (one size
        query per data file, concurrent where remote)."""
        cols = self.columns()
        shard = cols.shard[rows]
        ok = (shard >= 0) & (shard < self.header.num_shards)
        if not ok.any():
            return ok
        if shard.min() == shard.max():  # the common case: one data file
            ids, where = [int(shard[0])], None
        else:
            keyed = np.where(ok, shard, -1)
            ids_arr = distinct(keyed)
            ids, where = ids_arr.tolist(), np.searchsorted(ids_arr, keyed)

        def reading(i: int) -> str:
            picked = np.arange(len(cols.names))[rows][shard == i][:3].tolist()
            return ", ".join(
                f"bytes [{cols.offset[r]}, {cols.offset[r] + cols.size[r]}) (tensors {cols.names[r]!r})" for r in picked
            )

        self._sizes_of([i for i in ids if i >= 0], reading)
        limits = np.array([self._file_sizes.get(i, -1) for i in ids], np.int64)
        limit = limits[0] if where is None else limits[where]
        # offset <= limit - size: offset + size could wrap int64 (each is below 2^63, not their sum)
        ok &= cols.offset[rows] <= limit - cols.size[rows]
        return ok

    def entry(self, name: str) -> TensorEntry:
        """The entry of tensor ``name``, its shape checked (TF refuses a tensor of invalid shape
        when it is read, not when the index is opened)."""
        try:
            e = self.entries[name]
        except KeyError:
            raise TensorNotFoundError(f"Key {name} not found in checkpoint {self.prefix}") from None
        check_shape(e.shape, e.dtype, f"{self.prefix}.index: tensor {name!r}")
        return e

    def slice_entry(self, name: str, extents: Extents) -> TensorEntry:
        key = slice_key(name, extents)
        raw = self._slice_values.get(key)
        if raw is None:
            raise CorruptCheckpointError(
                f"{self.prefix}.index: tensor {name!r} lists slice {list(extents)} but its entry is missing"
            )
        try:
            entry = decode_entry(name, raw)
        except DistRestoreError as e:
            raise type(e)(f"{self.prefix}.index: {e}") from None
        if entry.dtype != self.entries[name].dtype:
            raise CorruptCheckpointError(f"{self.prefix}.index: slice of {name!r} has a different dtype")
        return entry

    def raw_slice_entries(self) -> Mapping[bytes, bytes]:
        """The hidden slice entries of partitioned tensors, undecoded: encoded slice key ->
        raw ``BundleEntryProto`` bytes (read-only; what a merge copies across)."""
        return MappingProxyType(self._slice_values)

    def partition(self, entry: TensorEntry) -> tuple[Box, ...]:
        """The boxes of a partitioned tensor's stored slices, checked once as TF checks them:
        inside the full shape, none overlapping another."""
        boxes = self._partitions.get(entry.name)
        if boxes is None:
            boxes = self._partitions[entry.name] = check_partition(
                entry.slices, entry.shape, f"{self.prefix}: partitioned tensor {entry.name!r}"
            )
        return boxes

    def rows_of(self, names: list[str]) -> np.ndarray:
        """Row of each name in ``columns()`` (-1 where absent)."""
        return self.entries.rows_of(names)

    def columns(self) -> IndexColumns:
        """The entries as numpy columns, for planning 10^5 tensors at numpy speed."""
        return self.entries.columns

    def has_tensor(self, name: str) -> bool:
        return name in self.entries or name.encode("utf-8", "surrogateescape") in self._slice_values

    def shape_map(self) -> dict[str, list[int]]:
        cols = self.columns()
        with gc_paused():
            return dict(zip(cols.names, map(list, cols.shapes)))

    def dtype_map(self) -> dict[str, np.dtype]:
        cols = self.columns()
        numpy_of = {enum: dtypes.from_enum(int(enum)).numpy for enum in distinct(cols.dtype).tolist()}
        return dict(zip(cols.names, map(numpy_of.__getitem__, cols.dtype.tolist())))

    def __repr__(self) -> str:
        return (
            f"CheckpointIndex({redact_url(self.prefix)!r}, {len(self.entries)} tensors, "
            f"{self.header.num_shards} data file(s))"
        )


def _check_version(header: BundleHeader, path: str) -> None:
    """TF's CheckVersions(header.version, kTensorBundleVersion=1, kTensorBundleMinProducer=0)."""
    if header.producer < 0:
        raise UnsupportedCheckpointError(f"{path}: bundle producer version {header.producer} is too old")
    if header.min_consumer > CONSUMER:
        raise UnsupportedCheckpointError(
            f"{path}: bundle needs reader version {header.min_consumer}; this reader is version {CONSUMER}"
        )
    if CONSUMER in header.bad_consumers:
        raise UnsupportedCheckpointError(f"{path}: bundle disallows reader version {CONSUMER}")


# -- resolution ----------------------------------------------------------------------------


def call_storage(
    path: str,
    storage_options: dict | None,
    storage: Storage | None,
    timeout: float | None,
    at: float | None,
) -> tuple[Storage, Storage]:
    """``(storage, for_this_call)``: the storage to keep (``timeout`` applied) and the same
    storage bounded by the call's deadline (``at``, a wall-clock time)."""
    storage = (storage or Storage.for_url(path, storage_options)).limited(timeout=timeout)
    return storage, storage.limited(deadline_at=at)


def get_checkpoint_state(
    checkpoint_dir: str,
    latest_filename: str | None = None,
    *,
    storage_options: dict | None = None,
    storage: Storage | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> CheckpointState | None:
    """The directory's ``checkpoint`` state, relative paths joined with the directory (TF's
    ``get_checkpoint_state``); None when the file does not exist. Paths are resolved as TF
    resolves them (see :func:`_resolve`)."""
    found, _ = _state_file(checkpoint_dir, latest_filename, storage_options, storage, timeout, deadline)
    return None if found is None else found[0]


def latest_checkpoint(
    checkpoint_dir: str,
    latest_filename: str | None = None,
    *,
    storage_options: dict | None = None,
    storage: Storage | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> str | None:
    """The newest checkpoint prefix listed in the directory's state file, if its files exist
    inside the directory's filesystem and bucket (else None, as TF finds nothing there)."""
    found, storage = _state_file(checkpoint_dir, latest_filename, storage_options, storage, timeout, deadline)
    return None if found is None else _existing(found, storage)


def _state_file(checkpoint_dir, latest_filename, storage_options, storage, timeout, deadline):
    """``(_read_state(...), the call's storage)`` for the public state-file functions."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    _, storage = call_storage(checkpoint_dir, storage_options, storage, timeout, deadline_at(deadline))
    return _read_state(checkpoint_dir, latest_filename, storage), storage


def _existing(found: tuple[CheckpointState, bool, str], storage: Storage) -> str | None:
    state, inside, _ = found
    prefix = state.model_checkpoint_path
    if inside and (storage.exists(prefix + ".index") or storage.exists(prefix)):
        return prefix
    return None


def _read_state(checkpoint_dir: str, latest_filename: str | None, storage: Storage):
    """``(state, inside, state file)``: the state with TF's paths, and whether its
    ``model_checkpoint_path`` lies inside the directory's filesystem and bucket; None without
    a (parseable) state file."""
    path = join(checkpoint_dir, latest_filename or "checkpoint")
    try:
        text = storage.read(path).decode("utf-8")
    except CheckpointNotFoundError:
        return None
    try:
        state = parse_state(text, path)
    except (CorruptCheckpointError, UnicodeDecodeError) as e:
        # TF logs "<path>: Checkpoint ignored" and carries on as if there were no state file
        warnings.warn(f"{path}: checkpoint state file ignored, it does not parse: {e}", stacklevel=4)
        return None
    if not state.model_checkpoint_path:
        raise CorruptCheckpointError(f"Invalid checkpoint state loaded from {checkpoint_dir}")
    latest, inside = _resolve(checkpoint_dir, state.model_checkpoint_path, storage.local)
    paths = [_resolve(checkpoint_dir, p, storage.local)[0] for p in state.all_model_checkpoint_paths]
    return state._replace(model_checkpoint_path=latest, all_model_checkpoint_paths=paths), inside, path


_ALIASES = {"s3a": "s3", "gcs": "gs"}


def _resolve(directory: str, p: str, local: bool) -> tuple[str, bool]:
    """A state-file path as TF resolves it (``os.path.isabs`` keeps it, anything else, URLs
    included, is joined to the directory), and whether it is inside the directory's filesystem
    and bucket. One extension: in a bucket, a full URL into the same bucket (what TF1's ``Saver``
    writes there) is kept and inside; TF would join it into a name that does not exist."""
    if local:
        return (p, True) if os.path.isabs(p) else (os.path.join(directory, p), "://" not in p)
    if "://" in p:
        (scheme, bucket), (other_scheme, other_bucket) = bucket_of(directory), bucket_of(p)
        if _ALIASES.get(other_scheme, other_scheme) == _ALIASES.get(scheme, scheme) and other_bucket == bucket:
            return p, True
        return directory.rstrip("/") + "/" + p, False  # TF's os.path.join: a key inside the directory
    if p.startswith("/"):
        return p, False  # TF reads this from the local disk: never followed from a bucket
    return join(directory, p), True


def resolve_prefix(ckpt_dir_or_file: str, storage: Storage) -> str:
    """Directory -> latest checkpoint (or a SavedModel's variables); anything else is a prefix."""
    path = str(ckpt_dir_or_file)
    if storage.isdir(path):
        found = _read_state(path, None, storage)
        prefix = None if found is None else _existing(found, storage)
        if prefix is not None:
            return prefix
        saved_model_vars = join(path, "variables", "variables")
        if storage.exists(saved_model_vars + ".index"):
            return saved_model_vars
        if found is not None and not found[1]:
            raise CheckpointPathError(
                f"{found[2]} names checkpoint {found[0].model_checkpoint_path!r}, outside the filesystem or "
                f"bucket of {path}; distrestore follows state-file paths only inside them (TF finds no "
                "checkpoint there either)"
            )
        raise NoCheckpointInDirectoryError(f"Couldn't find 'checkpoint' file or checkpoints in given directory {path}")
    return path


def _refuse_v1(prefix: str, storage: Storage) -> None:
    candidates = [prefix] if storage.exists(prefix) else storage.glob(prefix + "-?????-of-?????")
    for path in candidates[:1]:
        try:
            size = storage.size(path)
            tail = storage.read(path, max(0, size - 8), size)
        except (StorageError, CheckpointNotFoundError, IsADirectoryError):
            continue
        if len(tail) == 8 and struct.unpack("<Q", tail)[0] == sstable.MAGIC:
            raise UnsupportedCheckpointError(
                f"{prefix} is a V1-format checkpoint (TensorSliceReader, no .index file); "
                "distrestore reads only the V2 format. Convert it with TensorFlow: restore it "
                "with tf.compat.v1.train.Saver and save it again (the default writes V2)."
            )


def open_checkpoint(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    storage: Storage | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> CheckpointIndex:
    """Resolve a directory or prefix and read its index once. ``timeout``: seconds a request
    may stall before it is retried (kept by the index for later reads); ``deadline``: seconds
    for this call."""
    return open_index(
        ckpt_dir_or_file, storage_options=storage_options, storage=storage, timeout=timeout, at=deadline_at(deadline)
    )


def open_index(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    storage: Storage | None = None,
    timeout: float | None = None,
    at: float | None = None,
) -> CheckpointIndex:
    """:func:`open_checkpoint` under a deadline given as a wall-clock time ``at``."""
    if isinstance(ckpt_dir_or_file, CheckpointIndex):
        return ckpt_dir_or_file
    path = os.fspath(ckpt_dir_or_file)
    keep, storage = call_storage(path, storage_options, storage, timeout, at)
    index = _open(path, storage)
    index.storage = keep  # the index outlives this call's deadline
    return index


def usual_data_file(prefix: str) -> str:
    """The data file of a checkpoint of one data file, the usual case, named by its prefix alone."""
    return f"{prefix}.data-00000-of-00001"


def _open(path: str, storage: Storage) -> CheckpointIndex:
    tried = None
    if not storage.local:
        # a prefix is the common case: its index in one GET, no metadata round trips first
        # (a path that is also a directory with a `checkpoint` file is resolved as TF would
        # only when it has no .index of its own)
        single = BackgroundSize(storage, usual_data_file(path))
        try:
            index = CheckpointIndex.open(path, storage)
        except CheckpointNotFoundError:
            tried = path
        else:
            if index.header.num_shards == 1 and index.data_file(0) == single.url:
                size = single.result()
                if size is not None:
                    index._file_sizes.setdefault(0, size)
            return index
    prefix = resolve_prefix(path, storage)
    if prefix != tried:
        try:
            return CheckpointIndex.open(prefix, storage)
        except CheckpointNotFoundError:
            pass
    _refuse_v1(prefix, storage)
    raise CheckpointNotFoundError(
        f"Unsuccessful TensorSliceReader constructor: Failed to find any matching files for "
        f"{prefix} (no {prefix}.index)"
    )
