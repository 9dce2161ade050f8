"""An exact ``.npz`` encoding of checkpoint tensors: every name, TF dtype, shape and bit kept.

A plain ``np.savez`` of restored tensors loses things: bfloat16, float8 and int4 arrays come back
as raw void arrays (or cannot be written), strings need pickle, and names must be mangled into
member names. This encoding keeps an ordinary ``.npz`` (a zip of ``.npy`` files, no pickle) with:

* one member per tensor, named ``t0``, ``t1``, ... (never derived from the tensor's name):
  - numpy's own dtypes (float32, int64, bool, complex128, ...) stored as they are, so
    ``np.load(path)["t3"]`` is already the value;
  - ml_dtypes types (bfloat16, float8_*, int4, uint4, int2, uint2, float4_e2m1fn) stored as the
    unsigned integer view of the same width (``uint16`` for bfloat16, ``uint8`` for float8 and
    int4), bit for bit;
  - strings as one ``uint8`` array: for each element in C order, its length as 8 bytes little
    endian, then its bytes;
* a member ``__distrestore__``: a ``uint8`` array holding UTF-8 JSON,
  ``{"format": "distrestore.npz", "version": 1, "tensors": [{"name", "member", "dtype", "shape",
  "encoding"}]}`` with each tensor's real name, TF dtype name, shape and encoding
  (``"array"``, ``"view"`` or ``"strings"``).

Read it back with :func:`load_npz` (``{name: array}``, with the same numpy dtypes a restore
gives), or by hand from the manifest with numpy and ml_dtypes alone.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import CorruptCheckpointError
from ..format import dtypes
from .files import AtomicFiles

__all__ = ["MANIFEST_MEMBER", "NpzWriter", "load_npz", "save_npz"]

MANIFEST_MEMBER = "__distrestore__"
FORMAT = "distrestore.npz"
VERSION = 1


def _encode(arr: np.ndarray, dt: dtypes.DType) -> tuple[np.ndarray, str]:
    if dt.is_string:
        flat = arr.reshape(-1)
        parts = []
        for e in flat:
            b = e if isinstance(e, bytes) else (e.encode() if isinstance(e, str) else bytes(e))
            parts.append(len(b).to_bytes(8, "little"))
            parts.append(b)
        return np.frombuffer(b"".join(parts), dtype=np.uint8), "strings"
    if dt.is_variant:
        raise ValueError("a DT_VARIANT tensor has no array value to write")
    arr = np.asarray(arr, dtype=dt.numpy)
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if arr.dtype.isbuiltin == 1:  # one of numpy's own types
        return arr, "array"
    return arr.reshape(-1).view(np.dtype(f"<u{arr.dtype.itemsize}")).reshape(arr.shape), "view"


def _decode(stored: np.ndarray, entry: dict, path: str) -> np.ndarray:
    name, encoding = entry["name"], entry["encoding"]
    dt = dtypes.BY_NAME.get(entry["dtype"])
    shape = tuple(entry["shape"])
    if dt is None:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has unknown dtype {entry['dtype']!r}")
    if encoding == "strings":
        data = stored.tobytes()
        count = int(np.prod(shape, dtype=np.int64))
        out = np.empty(count, dtype=object)
        pos = 0
        for i in range(count):
            if pos + 8 > len(data):
                raise CorruptCheckpointError(f"{path}: tensor {name!r}: string data ends early")
            n = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
            if pos + n > len(data):
                raise CorruptCheckpointError(f"{path}: tensor {name!r}: string data ends early")
            out[i] = data[pos : pos + n]
            pos += n
        if pos != len(data):
            raise CorruptCheckpointError(f"{path}: tensor {name!r}: {len(data) - pos} bytes after the last string")
        return out.reshape(shape)
    if encoding not in ("view", "array") or stored.dtype.itemsize != dt.itemsize:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r}: encoding {encoding!r} of {stored.dtype} does not hold {dt.name}"
        )
    if stored.shape != shape:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has shape {list(stored.shape)}, manifest says {shape}")
    # a view of the flat array: numpy turns a 0-d view into shape (1,)
    return stored.reshape(-1).view(dt.numpy).reshape(shape)


class NpzWriter:
    """Write tensors one at a time (streaming: nothing is kept after :meth:`add` returns)::

        with NpzWriter("out.npz") as w:
            for name, array in dr.iter_restore_tensors(ckpt):
                w.add(name, array)

    The file appears only when the block ends without an error."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._files = AtomicFiles()
        self._fd = self._files.open(self.path)
        self._file = os.fdopen(self._fd, "wb", closefd=False)
        self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._entries: list[dict] = []
        self._names: set[str] = set()

    def add(self, name: str, value, tf_dtype=None) -> None:
        """Add one tensor. ``tf_dtype``: its TF dtype (a name like ``"qint8"`` or a DType) when the
        numpy dtype alone does not say it; by default the one numpy's dtype maps to."""
        if name in self._names:
            raise ValueError(f"tensor {name!r} added twice")
        dt = dtypes.resolve(tf_dtype) if tf_dtype is not None else None
        if dt is None:
            value = value if isinstance(value, np.ndarray) else np.asarray(value)
            dt = dtypes.from_numpy(value.dtype)
        arr = np.asarray(value, dtype=object) if dt.is_string else np.asarray(value)
        stored, encoding = _encode(arr, dt)
        member = f"t{len(self._entries)}"
        self._write_member(member, stored)
        self._names.add(name)
        self._entries.append(
            {"name": name, "member": member, "dtype": dt.name, "shape": list(arr.shape), "encoding": encoding}
        )

    def _write_member(self, member: str, arr: np.ndarray) -> None:
        with self._zip.open(member + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    def close(self) -> None:
        manifest = {"format": FORMAT, "version": VERSION, "tensors": self._entries}
        self._write_member(MANIFEST_MEMBER, np.frombuffer(json.dumps(manifest).encode("utf-8"), dtype=np.uint8))
        self._zip.close()
        self._file.close()
        self._files.commit()

    def abort(self) -> None:
        try:
            self._zip.close()
            self._file.close()
        finally:
            self._files.abort()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_npz(path, tensors: Mapping | Iterable, *, tf_dtypes: Mapping | None = None) -> str:
    """Write ``tensors`` (a mapping or ``(name, array)`` pairs) to ``path`` in this module's exact
    encoding; ``tf_dtypes`` maps names to TF dtypes where numpy's dtype does not say it (the
    quantized types). Returns the path.

    >>> dr.save_npz("t.npz", {"w": np.ones(3, ml_dtypes.bfloat16), "names": [b"a", b"b"]})
    't.npz'
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    tf_dtypes = tf_dtypes or {}
    with NpzWriter(path) as w:
        for name, value in items:
            w.add(name, value, tf_dtypes.get(name))
    return os.fspath(path)


def load_npz(path) -> dict[str, np.ndarray]:
    """``{name: array}`` from a ``.npz`` written by :func:`save_npz` or ``distrestore restore
    --output x.npz``: the checkpoint's names, dtypes (bfloat16 etc. as ml_dtypes arrays, strings
    as object arrays of bytes) and values, bit for bit. No pickle is involved."""
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as z:
        if MANIFEST_MEMBER not in z.files:
            raise CorruptCheckpointError(
                f"{path}: no {MANIFEST_MEMBER} member: not written by distrestore (use np.load for plain .npz files)"
            )
        manifest = json.loads(z[MANIFEST_MEMBER].tobytes().decode("utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise CorruptCheckpointError(
                f"{path}: manifest format {manifest.get('format')!r} version {manifest.get('version')!r} "
                f"is not {FORMAT!r} version {VERSION}"
            )
        return {e["name"]: _decode(z[e["member"]], e, path) for e in manifest["tensors"]}
