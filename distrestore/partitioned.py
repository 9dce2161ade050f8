"""Partitioned variables, as TF's ``fixed_size_partitioner`` splits them: ``PartitionedVariable``,
its parts (``VariablePart``, a ``Variable`` that knows its slice) and their ``SaveSliceInfo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ShapeMismatchError
from .format import dtypes
from .format.slices import Box, format_spec
from .variable import Variable

__all__ = ["PartitionedVariable", "SaveSliceInfo", "VariablePart", "slice_layout"]


@dataclass(frozen=True)
class SaveSliceInfo:
    """Where one part lies in its partitioned variable (TF's ``Variable.SaveSliceInfo``)."""

    full_name: str
    full_shape: tuple[int, ...]
    var_offset: tuple[int, ...]
    var_shape: tuple[int, ...]

    @property
    def spec(self) -> str:
        """TF's slice spec, e.g. ``"100 100 0,20:0,100"`` (every dimension written out)."""
        return format_spec(self.full_shape, self.box)

    @property
    def box(self) -> Box:
        return tuple((o, o + n) for o, n in zip(self.var_offset, self.var_shape))


class VariablePart(Variable):
    """One part of a :class:`PartitionedVariable`: a ``Variable`` that knows its slice."""

    def __init__(self, initial_value, *, dtype: dtypes.DType, info: SaveSliceInfo, index: int):
        super().__init__(initial_value, shape=info.var_shape, dtype=dtype, name=f"{info.full_name}/part_{index}")
        self.save_slice_info = info

    @property
    def offset(self) -> tuple[int, ...]:
        return self.save_slice_info.var_offset

    @property
    def full_name(self) -> str:
        return self.save_slice_info.full_name

    @property
    def full_shape(self) -> tuple[int, ...]:
        return self.save_slice_info.full_shape

    @property
    def spec(self) -> str:
        return self.save_slice_info.spec

    @property
    def region(self) -> tuple[slice, ...]:
        """This part's region of the full tensor, as numpy slices."""
        return tuple(slice(a, b) for a, b in self.save_slice_info.box)


def slice_layout(shape: tuple[int, ...], partitions: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """TF's ``_call_partitioner`` checks and ``_iter_slices``: [(offset, part shape), ...]."""
    if len(shape) < 1:
        raise ValueError(f"A partitioned Variable must have rank at least 1, shape: {list(shape)}")
    partitions = [int(p) for p in partitions]
    if len(partitions) != len(shape):
        raise ValueError(
            "Partitioner returned a partition list that does not match the "
            f"Variable's rank: {partitions} vs. {list(shape)}"
        )
    if any(p < 1 for p in partitions):
        raise ValueError(f"Partitioner returned zero partitions for some axes: {partitions}")
    if sum(p > 1 for p in partitions) > 1:
        raise ValueError(
            f"Can only slice a variable along one dimension: shape: {list(shape)}, partitioning: {partitions}"
        )
    dim = next((d for d, p in enumerate(partitions) if p > 1), 0)
    num = partitions[dim]
    if num > shape[dim]:
        # TF's _PartitionInfo rejects the empty parts this would make
        raise ValueError(f"cannot split dimension {dim} of size {shape[dim]} into {num} parts")
    excess, base = shape[dim] % num, shape[dim] // num
    out, offset = [], [0] * len(shape)
    for i in range(num):
        part = list(shape)
        part[dim] = base + (i < excess)
        out.append((tuple(offset), tuple(part)))
        offset[dim] += part[dim]
    return out


class PartitionedVariable:
    """A variable stored as parts ``<name>/part_<i>`` split along one dimension, like TF's.

    ``parts`` are :class:`VariablePart` objects (``Variable`` subclasses with ``offset``,
    ``spec`` and ``region``); ``numpy()`` assembles the whole value.
    """

    def __init__(
        self, name: str, shape: tuple[int, ...], dtype: dtypes.DType, partitions: Sequence[int], initializer=None
    ):
        self.name = name
        self._shape = tuple(int(d) for d in shape)
        self._dtype = dtype
        self.partitions = [int(p) for p in partitions]
        layout = slice_layout(self._shape, self.partitions)
        full_init = None
        if initializer is not None and not callable(initializer):
            full_init = np.asarray(initializer) if dtype.fixed_width else np.asarray(initializer, dtype=object)
            if full_init.ndim and full_init.shape != self._shape:
                raise ShapeMismatchError(
                    f"initializer of shape {list(full_init.shape)} does not match partitioned "
                    f"variable {name} of shape {list(self._shape)}"
                )
        self.parts: list[VariablePart] = []
        for i, (offset, part_shape) in enumerate(layout):
            info = SaveSliceInfo(name, self._shape, offset, part_shape)
            if full_init is None:
                init = initializer  # None (zeros) or a callable, called with the part's shape
            elif full_init.ndim == 0:
                init = full_init
            else:
                init = full_init[tuple(slice(a, b) for a, b in info.box)]
            self.parts.append(VariablePart(init, dtype=dtype, info=info, index=i))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype.numpy

    @property
    def tf_dtype(self) -> dtypes.DType:
        return self._dtype

    def numpy(self) -> np.ndarray:
        """The whole value, assembled from the parts (a new array)."""
        out = np.empty(self._shape, dtype=self._dtype.numpy)
        for part in self.parts:
            out[part.region] = part.numpy()
        return out

    def assign(self, value) -> PartitionedVariable:
        arr = np.asarray(value, dtype=self._dtype.numpy)
        if arr.shape != self._shape:
            raise ShapeMismatchError(
                f"cannot assign a value of shape {list(arr.shape)} to partitioned "
                f"variable {self.name} of shape {list(self._shape)}"
            )
        for part in self.parts:
            part.assign(arr[part.region])
        return self

    def __iter__(self):
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def __repr__(self) -> str:
        return (
            f"<dr.PartitionedVariable {self.name} shape={list(self._shape)} "
            f"dtype={self._dtype.name} partitions={self.partitions}>"
        )
