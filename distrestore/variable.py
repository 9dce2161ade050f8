"""``Variable``: a named, typed, shaped value holder that restores write into.

The one value type shared by name-based restore (``VariableStore``) and object-based restore
(``Checkpoint``/``Node``). Assignment checks shape and dtype first, so a mismatch never leaves a
variable half-assigned.
"""

from __future__ import annotations

import numpy as np

from .errors import DTypeMismatchError, ShapeMismatchError
from .format import dtypes


def _initial(value, shape, dtype: dtypes.DType) -> np.ndarray:
    if callable(value):
        value = value(shape, dtype.numpy)
    if value is None:
        if shape is None:
            raise ValueError("a Variable needs an initial_value or a shape")
        if dtype.is_string:
            arr = np.empty(shape, dtype=object)
            arr.fill(b"")
            return arr
        return np.zeros(shape, dtype=dtype.numpy)
    arr = np.array(value, dtype=dtype.numpy, copy=True)
    if dtype.is_string:
        arr = (
            np.vectorize(lambda s: s.encode() if isinstance(s, str) else bytes(s), otypes=[object])(arr)
            if arr.size
            else arr
        )
    if shape is not None:
        if arr.shape != tuple(shape):
            arr = np.broadcast_to(arr, tuple(shape)).copy()
    return arr


class Variable:
    """A variable: ``Variable(initial_value=None, *, shape=None, dtype="float32", name=None)``.

    ``initial_value`` is an array-like, a scalar (broadcast to ``shape``), a callable
    ``(shape, numpy_dtype) -> array``, or None for zeros. ``dtype`` is a TF name ("float32",
    "bfloat16", "string", ...) or a numpy dtype.
    """

    def __init__(self, initial_value=None, *, shape=None, dtype="float32", name: str | None = None):
        if initial_value is not None and not callable(initial_value) and dtype == "float32":
            # dtype left at its default: a numpy value keeps its own dtype, text becomes a
            # string variable, and Python numbers stay float32
            arr = np.asarray(initial_value)
            if arr.dtype.kind in "OSU":
                dtype = "string"
            elif isinstance(initial_value, (np.ndarray, np.generic)):
                dtype = arr.dtype
        self._dtype = dtypes.resolve(dtype)
        value = _initial(initial_value, None if shape is None else tuple(int(d) for d in shape), self._dtype)
        self._value = value
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype.numpy

    @property
    def tf_dtype(self) -> dtypes.DType:
        return self._dtype

    def numpy(self) -> np.ndarray:
        """A copy of the current value (like TF's ``Variable.numpy``)."""
        return self._value.copy()

    def value(self) -> np.ndarray:
        return self.numpy()

    def check_assignable(self, shape, dtype: dtypes.DType, *, what: str) -> None:
        """Raise ShapeMismatchError or DTypeMismatchError unless a value of ``shape``/``dtype``
        fits this variable."""
        if tuple(shape) != self.shape:
            raise ShapeMismatchError(
                f"{what}: shape {list(shape)} does not match variable "
                f"{self.name or '<unnamed>'} of shape {list(self.shape)}"
            )
        if dtype.enum != self._dtype.enum:
            raise DTypeMismatchError(
                f"{what}: dtype {dtype.name} does not match variable "
                f"{self.name or '<unnamed>'} of dtype {self._dtype.name}"
            )

    def assign(self, value) -> Variable:
        arr = (
            np.asarray(value, dtype=self._dtype.numpy) if not self._dtype.is_string else np.asarray(value, dtype=object)
        )
        if arr.shape != self.shape:
            raise ShapeMismatchError(
                f"cannot assign a value of shape {list(arr.shape)} to variable "
                f"{self.name or '<unnamed>'} of shape {list(self.shape)}"
            )
        self._value = arr.copy() if arr is value else arr
        return self

    def __repr__(self) -> str:
        return f"<dr.Variable {self.name or ''!s} shape={list(self.shape)} dtype={self._dtype.name}>"
