"""Writing bundles TF reads: ``save_tensors`` and ``merge_checkpoints`` (TF's MergeV2Checkpoints).

``save_tensors`` writes what ``tf.raw_ops.SaveV2`` would: dense data files (no padding), one
uncompressed index with per-tensor masked CRC32C. ``merge_checkpoints`` follows TF's merge:
data files are renamed (copied only across filesystems), duplicate keys are rejected, slices of
one tensor from several inputs are joined; unlike TF it never deletes a directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import DistRestoreError, MergeConflictError
from .format import crc, dtypes, sstable
from .format.messages import decode_entry, encode_entry, encode_header
from .format.strings import encode_strings
from .index import CheckpointIndex, open_checkpoint
from .storage import Storage, dirname


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
    them; bfloat16/float8/int4 via ml_dtypes arrays."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    prefix = os.fspath(prefix)  # a str or a path-like, as TF's savers accept
    storage = Storage.for_url(prefix, storage_options)
    items = sorted(((n, *_as_array(n, v)) for n, v in tensors.items()), key=lambda t: t[0].encode())
    if any(n == "" for n, _, _ in items):
        raise ValueError("a tensor name must not be empty (the empty key holds the header)")
    # balance shards by bytes, biggest first, then write each shard in name order
    loads = [0] * num_shards
    shard_of = {}
    for n, arr, _ in sorted(items, key=lambda t: -t[1].nbytes):
        s = loads.index(min(loads))
        shard_of[n] = s
        loads[s] += arr.nbytes
    d = dirname(prefix)
    if d:
        storage.makedirs(d)
    tmp = f".tempstate{uuid.uuid4().int & (2**63 - 1)}"
    index_items = [(b"", encode_header(num_shards))]
    entries = {}
    for shard in range(num_shards):
        path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
        with storage.open_write(path + tmp) as f:
            offset = 0
            for name, arr, dt in items:
                if shard_of[name] != shard:
                    continue
                data, checksum = _encode(arr, dt)
                f.write(data)
                size = len(data) if isinstance(data, bytes) else data.nbytes
                entries[name] = encode_entry(dt.enum, arr.shape, shard, offset, size, checksum)
                offset += size
        storage.rename(path + tmp, path)
    index_items += [(n.encode(), entries[n]) for n, _, _ in items]
    storage.write_bytes(prefix + ".index" + tmp, sstable.build_table(index_items))
    storage.rename(prefix + ".index" + tmp, prefix + ".index")
    return prefix


def merge_checkpoints(sources: Sequence[str], destination: str, *, storage_options: dict | None = None) -> str:
    """Merge bundles into one at ``destination`` (TF's ``merge_v2_checkpoints``): the merged
    index lists every tensor, source data files are renamed into place (copied if they live on
    another filesystem), source ``.index`` files are removed. No directory is ever deleted."""
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
    merged: dict[bytes, bytes] = {}
    full: dict[str, tuple] = {}  # sliced tensors: name -> (dtype, shape, slices)

    def relocate(idx: CheckpointIndex, key: bytes, raw: bytes) -> bytes:
        e = decode_entry(key.decode("utf-8", "surrogateescape"), raw)
        src = idx.data_file(e.shard_id)
        new = shard_ids.setdefault(src, len(shard_ids))
        return encode_entry(e.dtype.enum, e.shape, new, e.offset, e.size, e.crc32c)

    for idx in indexes:
        for name, e in idx.entries.items():
            if e.slices:
                prev = full.get(name)
                if prev is not None and (prev[0], prev[1]) != (e.dtype.enum, e.shape):
                    raise MergeConflictError(f"tensor {name!r} has a different dtype or shape in {idx.prefix}")
                full[name] = (e.dtype.enum, e.shape, (prev[2] if prev else ()) + e.slices)
                continue
            key = name.encode("utf-8", "surrogateescape")
            if key in merged or name in full:
                raise MergeConflictError(f"Duplicate tensor keyed by {name} in {idx.prefix}")
            merged[key] = relocate(
                idx, key, encode_entry(e.dtype.enum, e.shape, e.shard_id, e.offset, e.size, e.crc32c)
            )
        for key, raw in idx.raw_slice_entries().items():
            if key in merged:
                raise MergeConflictError(f"Duplicate slice entry in {idx.prefix}")
            merged[key] = relocate(idx, key, raw)
    for name, (dt, shape, slices) in full.items():
        key = name.encode("utf-8", "surrogateescape")
        if key in merged:
            raise MergeConflictError(f"Duplicate tensor keyed by {name}")
        merged[key] = encode_entry(dt, shape, slices=slices)

    d = dirname(destination)
    if d:
        dest_storage.makedirs(d)
    by_storage = {idx.prefix: idx.storage for idx in indexes}
    for src, new in shard_ids.items():
        dst = f"{destination}.data-{new:05d}-of-{total:05d}"
        src_storage = next(s for p, s in by_storage.items() if src.startswith(p + ".data-"))
        if src_storage.protocol == dest_storage.protocol:
            dest_storage.rename(src, dst)
        else:
            dest_storage.write_bytes(dst, src_storage.read(src))
            src_storage.remove(src)
    index_bytes = sstable.build_table([(b"", encode_header(total, first.endianness))] + sorted(merged.items()))
    tmp = destination + ".index.tempstate" + uuid.uuid4().hex
    dest_storage.write_bytes(tmp, index_bytes)
    dest_storage.rename(tmp, destination + ".index")
    for idx in indexes:
        if idx.prefix != destination:
            try:
                idx.storage.remove(idx.prefix + ".index")
            except (OSError, DistRestoreError):
                pass  # best effort, like TF
    return destination
