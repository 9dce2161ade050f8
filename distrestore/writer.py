"""Writing bundles TF reads: ``save_tensors`` and ``merge_checkpoints`` (TF's MergeV2Checkpoints).

``save_tensors`` writes what ``tf.raw_ops.SaveV2`` would: dense data files (no padding), one
uncompressed index with per-tensor masked CRC32C. ``merge_checkpoints`` follows TF's merge
(duplicate keys rejected, slices of one tensor from several inputs joined, the same shard
numbering) but links or copies data files instead of moving them, deletes sources only when asked
and never a directory. Both publish through :mod:`distrestore.durable`: data first, index last,
each file under a temporary name, fsynced, then renamed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from .durable import BundlePublisher, delete_bundle
from .errors import MergeConflictError
from .format import crc, dtypes, sstable
from .format.messages import TensorEntry, encode_entry, encode_header
from .format.slices import slice_key
from .format.strings import encode_strings
from .index import CheckpointIndex, open_checkpoint
from .storage import Storage, is_local, local_path


def _as_array(name: str, value) -> tuple[np.ndarray, dtypes.DType]:
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    if isinstance(value, (bytes, str)):
        value = np.array(value, dtype=object)
    arr = None
    if isinstance(value, (list, tuple)):
        # lists of bytes/str: np.asarray would make fixed-width S/U arrays, which drop trailing
        # NUL bytes (and refuse non-ASCII bytes next to str)
        obj = np.array(value, dtype=object)
        if obj.size and all(isinstance(v, (bytes, str)) for v in obj.reshape(-1).tolist()):
            arr = obj
    if arr is None:
        arr = np.asarray(value)
    dt = dtypes.from_numpy(arr.dtype)
    if dt.is_string:
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1).tolist()]
        obj = np.empty(len(flat), dtype=object)
        obj[:] = flat
        return obj.reshape(arr.shape), dt
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns scalars into shape [1]
    return (arr if arr.flags.c_contiguous else arr.copy(order="C")), dt


def _encode(arr: np.ndarray, dt: dtypes.DType) -> tuple[memoryview | bytes, int]:
    if dt.is_string:
        return encode_strings(arr.reshape(-1).tolist())
    data = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b""
    return data, crc.mask(crc.value(data))


def save_tensors(
    prefix: str, tensors: Mapping[str, object], *, num_shards: int = 1, storage_options: dict | None = None
) -> str:
    """Write ``tensors`` ({name: array-like}) as a V2 bundle at ``prefix`` over ``num_shards``
    data files (balanced by bytes); returns ``prefix``. Strings: str/bytes or object arrays of
    them; bfloat16/float8/int4 via ml_dtypes arrays.

    Atomic: a kill or failure at any point leaves ``prefix`` as it was or holding the new bundle
    in full, or, when an existing bundle with the same shard count is being replaced, without an
    index (``CheckpointNotFoundError`` on read) — never an index over other data. See
    ``docs/writes.md``."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    prefix = os.fspath(prefix)  # a str or a path-like, as TF's savers accept
    storage = Storage.for_url(prefix, storage_options)
    items = sorted(((n, *_as_array(n, v)) for n, v in tensors.items()), key=lambda t: _key(t[0]))
    if any(n == "" for n, _, _ in items):
        raise ValueError("a tensor name must not be empty (the empty key holds the header)")
    # balance shards by bytes, biggest first, then write each shard in name order
    loads = [0] * num_shards
    shard_of = {}
    for n, arr, _ in sorted(items, key=lambda t: -t[1].nbytes):
        s = loads.index(min(loads))
        shard_of[n] = s
        loads[s] += arr.nbytes
    entries = {}

    def shard_bytes(shard: int) -> Iterator:
        # the same bytes and entries at every call: an object store's retried upload calls it again
        offset = 0
        for name, arr, dt in items:
            if shard_of[name] != shard:
                continue
            data, checksum = _encode(arr, dt)
            size = len(data) if isinstance(data, bytes) else data.nbytes
            entries[name] = encode_entry(dt.enum, arr.shape, shard, offset, size, checksum)
            offset += size
            yield data

    with BundlePublisher(prefix, num_shards, storage) as publisher:
        for shard in range(num_shards):
            publisher.write_data(shard, functools.partial(shard_bytes, shard))
        index_items = [(b"", encode_header(num_shards))] + [(_key(n), entries[n]) for n, _, _ in items]
        publisher.commit(sstable.build_table(index_items))
    return prefix


def _key(name: str) -> bytes:
    """A tensor's index key: its name's bytes. Names read from an index that are not UTF-8 were
    kept with ``surrogateescape``: they are written back as the same bytes."""
    return name.encode("utf-8", "surrogateescape")


def _same_prefix(a: str, b: str) -> bool:
    if is_local(a) and is_local(b):
        return os.path.realpath(local_path(a)) == os.path.realpath(local_path(b))
    return a.rstrip("/") == b.rstrip("/")


def merge_checkpoints(
    sources: Sequence[str],
    destination: str,
    *,
    delete_sources: bool = False,
    storage_options: dict | None = None,
) -> str:
    """Merge bundles into one at ``destination`` (TF's ``merge_v2_checkpoints``): the merged
    index lists every tensor; each source data file an entry refers to becomes a destination data
    file by a hard link (a copy across filesystems or object stores), so sources stay intact.

    ``delete_sources=True`` removes the source bundles (index first, then data files) once the
    destination is complete and durable; unlike TF's ``delete_old_dirs`` no directory is ever
    deleted. The destination may be one of the sources (as TF allows). A kill or failure at any
    point leaves every source readable and the destination absent or complete; see
    ``docs/writes.md``."""
    if not sources:
        raise ValueError("merge_checkpoints needs at least one source")
    destination = os.fspath(destination)
    dest_storage = Storage.for_url(destination, storage_options)
    indexes = [open_checkpoint(s, storage_options=storage_options) for s in sources]
    first = indexes[0].header
    for idx in indexes[1:]:
        h = idx.header
        if (h.endianness, h.producer, h.min_consumer, h.bad_consumers) != (
            first.endianness,
            first.producer,
            first.min_consumer,
            first.bad_consumers,
        ):
            raise MergeConflictError(
                f"cannot merge {idx.prefix} with {indexes[0].prefix}: different endianness or version"
            )
    total = sum(idx.header.num_shards for idx in indexes)
    shard_ids: dict[str, int] = {}  # source data file -> new shard id, in order of first reference
    storage_of: dict[str, Storage] = {}
    merged: dict[bytes, bytes] = {}
    full: dict[str, tuple] = {}  # sliced tensors: name -> (dtype, shape, slices, shard id)

    def new_shard(idx: CheckpointIndex, shard_id: int) -> int:
        src = idx.data_file(shard_id)
        storage_of[src] = idx.storage
        return shard_ids.setdefault(src, len(shard_ids))

    def relocate(idx: CheckpointIndex, e: TensorEntry) -> bytes:
        return encode_entry(e.dtype.enum, e.shape, new_shard(idx, e.shard_id), e.offset, e.size, e.crc32c)

    def full_entry_shard(idx: CheckpointIndex, shard_id: int) -> int:
        """TF's merge gives a sliced tensor's full entry its first source's shard, remapped (in
        what TF writes, a file its slices were read from). No reader uses it: a file no entry
        was read from is not placed for it (0 then)."""
        if not 0 <= shard_id < idx.header.num_shards:
            return 0
        return shard_ids.get(idx.data_file(shard_id), 0)

    for idx in indexes:
        # TF walks each index in key order, where every slice key (it starts with a 0 byte) sorts
        # before every name: that order numbers the merged shards
        stored_slices = sorted((slice_key(e.name, x), e.name, x) for e in idx.entries.partitioned() for x in e.slices)
        for key, name, extents in stored_slices:
            if key in merged:
                raise MergeConflictError(f"Duplicate slice entry in {idx.prefix}")
            merged[key] = relocate(idx, idx.slice_entry(name, extents))
        for name, e in idx.entries.items():
            if e.slices:
                prev = full.get(name)
                if prev is not None and (prev[0], prev[1]) != (e.dtype.enum, e.shape):
                    raise MergeConflictError(f"tensor {name!r} has a different dtype or shape in {idx.prefix}")
                shard = prev[3] if prev else full_entry_shard(idx, e.shard_id)
                full[name] = (e.dtype.enum, e.shape, (prev[2] if prev else ()) + e.slices, shard)
                continue
            key = _key(name)
            if key in merged or name in full:
                raise MergeConflictError(f"Duplicate tensor keyed by {name} in {idx.prefix}")
            merged[key] = relocate(idx, e)
    for name, (dt, shape, slices, shard) in full.items():
        key = _key(name)
        if key in merged:
            raise MergeConflictError(f"Duplicate tensor keyed by {name}")
        merged[key] = encode_entry(dt, shape, shard, slices=slices)

    in_place = [idx for idx in indexes if _same_prefix(idx.prefix, destination)]
    if in_place and in_place[0].header.num_shards == total:
        if len(indexes) == 1:
            return destination  # merging a bundle into itself: it already is the result
        # the merged data files would take the names the destination's own index names
        raise MergeConflictError(f"cannot merge into {destination}: it is a source and the others have no data files")
    index_bytes = sstable.build_table([(b"", encode_header(total, first.endianness))] + sorted(merged.items()))
    with BundlePublisher(destination, total, dest_storage) as publisher:
        for src, new in shard_ids.items():
            publisher.place_data(new, storage_of[src], src)
        publisher.commit(index_bytes)
    if delete_sources:
        for idx in indexes:
            if not _same_prefix(idx.prefix, destination):  # its data files went with the commit
                delete_bundle(idx.prefix, idx.header.num_shards, idx.storage)
    return destination
