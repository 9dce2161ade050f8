"""Stream a TensorFlow checkpoint into safetensors files with bounded memory.

Every tensor's size is known from the checkpoint's index, so each output file's header (names,
dtypes, shapes, byte offsets) is written first, and tensors are then written into place as the
parallel restore delivers them (``iter_restore_tensors`` under ``max_inflight_bytes``): memory
holds the bytes in flight and the tensors being assembled, never the checkpoint. With
``max_shard_bytes`` the tensors are split over several files, named and indexed like Hugging
Face's (``model-00001-of-00003.safetensors`` and ``model.safetensors.index.json``). Files appear
complete or not at all.

safetensors has no dtype for strings, variants, complex128, float8_e4m3b11fnuz, int4/uint4,
int2/uint2 or float4_e2m1fn as TF stores them: a conversion that includes one fails before
reading anything, naming the tensor and dtype. Quantized types are written as the integers of
their width, and their TF dtype is recorded in the header's ``__metadata__`` (``tf_dtypes``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..errors import CorruptCheckpointError, UnsupportedCheckpointError
from ..index import CheckpointIndex, open_index
from ..restore import iter_restore_tensors, left_of
from ..storage.base import deadline_at
from .files import AtomicFiles, write_at

__all__ = ["SAFETENSORS_DTYPES", "convert_to_safetensors", "safetensors_dtype"]

SAFETENSORS_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "uint32": "U32",
    "int32": "I32",
    "uint64": "U64",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    # TF's quantized types are plain integers of their width in the bundle
    "qint8": "I8",
    "quint8": "U8",
    "qint16": "I16",
    "quint16": "U16",
    "qint32": "I32",
}
"""TF dtype name -> safetensors dtype, for every TF dtype safetensors can hold exactly."""

_QUANTIZED = ("qint8", "quint8", "qint16", "quint16", "qint32")
HEADER_ALIGN = 8


def safetensors_dtype(name: str, tf_dtype: str) -> str:
    """The safetensors dtype for tensor ``name`` of TF dtype ``tf_dtype``, or
    ``UnsupportedCheckpointError`` naming both."""
    try:
        return SAFETENSORS_DTYPES[tf_dtype]
    except KeyError:
        raise UnsupportedCheckpointError(
            f"tensor {name!r} is {tf_dtype}, which safetensors cannot hold: leave it out of the "
            "conversion (names= in Python, --names or --regex on the command line)"
        ) from None


class _Tensor(NamedTuple):
    name: str
    dtype: str  # safetensors
    shape: tuple[int, ...]
    nbytes: int


class _Shard(NamedTuple):
    path: str
    tensors: list[_Tensor]


def _layout(tensors: list[_Tensor], output: str, max_shard_bytes: int | None) -> list[_Shard]:
    """Hugging Face's greedy split: tensors in order, a new file when the next would pass the
    limit (a tensor larger than the limit gets a file of its own)."""
    groups: list[list[_Tensor]] = [[]]
    size = 0
    for t in tensors:
        if max_shard_bytes is not None and groups[-1] and size + t.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [_Shard(output, groups[0])]
    stem = output[: -len(".safetensors")]
    n = len(groups)
    return [_Shard(f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def _header(tensors: list[_Tensor], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """The encoded header (length prefix included, padded to 8 bytes) and each tensor's offset
    in the file."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    starts = {}
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        starts[t.name] = offset
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    base = 8 + len(raw)
    return len(raw).to_bytes(8, "little") + raw, {n: base + o for n, o in starts.items()}


def convert_to_safetensors(
    ckpt_dir_or_file,
    output: str,
    names: Sequence[str] | None = None,
    *,
    storage_options: dict | None = None,
    executor="threads",
    verify: bool = True,
    max_inflight_bytes: int | None = 256 << 20,
    max_shard_bytes: int | None = None,
    progress=None,
    timeout: float | None = None,
    deadline: float | None = None,
    **restore_kwargs,
) -> list[str]:
    """Write the checkpoint's tensors (all but variants by default, or ``names``) to ``output``
    (a local ``.safetensors`` path), streaming; returns the files written (with
    ``max_shard_bytes``, the shards and then the index file). Names are kept as they are in the
    checkpoint; values are bit-exact. At most ``max_inflight_bytes`` of reads are outstanding
    (None: the executor's own limit, which does not bound memory). ``timeout``: seconds a
    storage request may stall before it is retried; ``deadline``: seconds for the whole call
    (opening the index and every read; a ``StorageError`` when either runs out). Extra keywords
    go to ``iter_restore_tensors``.

    >>> dr.convert_to_safetensors("gs://bucket/run7", "model.safetensors", max_inflight_bytes=256 << 20)
    ['model.safetensors']
    """
    output = os.fspath(output)
    if not output.endswith(".safetensors"):
        raise ValueError(f"the output must be a .safetensors file, got {output!r}")
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    at = deadline_at(deadline)
    index: CheckpointIndex = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=at)
    if names is None:
        names = [n for n, e in index.entries.items() if not e.dtype.is_variant]
    tensors, tf_dtypes = [], {}
    for name in names:
        entry = index.entry(name)
        if name == "__metadata__":
            raise UnsupportedCheckpointError("a tensor named '__metadata__' cannot be stored in safetensors")
        st = safetensors_dtype(name, entry.dtype.name)
        if entry.dtype.name in _QUANTIZED:
            tf_dtypes[name] = entry.dtype.name
        tensors.append(_Tensor(name, st, tuple(entry.shape), entry.num_elements * entry.dtype.itemsize))
    metadata = {"converted_by": "distrestore"}
    if tf_dtypes:
        metadata["tf_dtypes"] = json.dumps(tf_dtypes, sort_keys=True)
    shards = _layout(tensors, output, max_shard_bytes)
    written = []
    with AtomicFiles() as files:
        where: dict[str, tuple[int, int, int]] = {}  # name -> (fd, offset, nbytes)
        for shard in shards:
            header, starts = _header(shard.tensors, metadata)
            fd = files.open(shard.path)
            write_at(fd, header, 0)
            os.ftruncate(fd, len(header) + sum(t.nbytes for t in shard.tensors))
            for t in shard.tensors:
                where[t.name] = (fd, starts[t.name], t.nbytes)
            written.append(shard.path)
        for name, arr in iter_restore_tensors(
            index,
            list(names),
            executor=executor,
            verify=verify,
            max_inflight_bytes=max_inflight_bytes,
            progress=progress,
            **left_of(timeout, at),
            **restore_kwargs,
        ):
            fd, offset, nbytes = where[name]
            data = np.ascontiguousarray(arr)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            if data.nbytes != nbytes:  # the restore and the index disagree: never write it
                raise CorruptCheckpointError(
                    f"tensor {name!r}: restored {data.nbytes} bytes where its index entry implies {nbytes}"
                )
            if nbytes:
                write_at(fd, data.reshape(-1).view(np.uint8), offset)
        if len(shards) > 1:
            index_path = output + ".index.json"
            weight_map = {t.name: os.path.basename(s.path) for s in shards for t in s.tensors}
            total = sum(t.nbytes for t in tensors)
            files.write_text(
                index_path, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
            )
            written.append(index_path)
    return written
