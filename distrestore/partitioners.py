"""TF1's variable partitioners, under TensorFlow's names, arguments and arithmetic.

A partitioner is a callable ``partitioner(shape, dtype) -> list[int]``: how many parts each axis
of a variable of that shape and dtype is split into (at most one entry above 1). Pass one to
``VariableStore.get_variable(name, shape=..., dtype=..., partitioner=...)`` to get the same parts
TF's ``tf.compat.v1.get_variable(..., partitioner=...)`` would make::

    store = dr.VariableStore()
    emb = store.get_variable("emb", shape=[10_000, 64], partitioner=dr.min_max_variable_partitioner(8))
    [p.shape for p in emb.parts]  # [(1250, 64), ...] -- 8 parts, as TF makes them

The arithmetic is ported line for line from ``tensorflow/python/ops/partitioned_variables.py``
(TF 2.21), including its floating point steps, so the counts agree with TF's for every shape,
dtype and limit (the tests compare them with live TF). ``shape`` is a sequence of ints (or
anything with ``as_list()``, like a ``tf.TensorShape``); ``dtype`` a TF dtype name, a numpy dtype,
a ``tf.DType`` or distrestore's own. Where TF fails by accident (a division by zero for an empty
axis, an ``IndexError`` for an axis the shape does not have) these raise ``ValueError`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .format import dtypes

__all__ = [
    "Partitioner",
    "call_partitioner",
    "fixed_size_partitioner",
    "min_max_variable_partitioner",
    "variable_axis_size_partitioner",
]

Partitioner = Callable[..., Sequence[int]]
"""``partitioner(shape, dtype) -> list[int]``, called with keyword arguments, like TF's."""


def _dims(shape) -> list[int]:
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    if any(d is None for d in dims):
        raise ValueError(f"shape is not fully defined: {dims}")
    return [int(d) for d in dims]


def _axis_size(dims: list[int], axis: int) -> int:
    try:
        return dims[axis]
    except IndexError:
        raise ValueError(f"Cannot partition variable along axis {axis} when shape is only {dims}") from None


def _element_size(dtype, bytes_per_string_element: int) -> int:
    dt = dtypes.resolve(dtype)
    if dt.is_string:
        return bytes_per_string_element
    return dt.itemsize


def _num_elements(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def fixed_size_partitioner(num_shards: int, axis: int = 0) -> Partitioner:
    """``num_shards`` parts along ``axis`` (fewer when the axis is shorter), like TF's."""

    def _partitioner(shape, **unused_args) -> list[int]:
        dims = _dims(shape)
        size = _axis_size(dims, axis)
        partitions = [1] * len(dims)
        partitions[axis] = min(num_shards, size)
        return partitions

    return _partitioner


def min_max_variable_partitioner(
    max_partitions: int = 1, axis: int = 0, min_slice_size: int = 256 << 10, bytes_per_string_element: int = 16
) -> Partitioner:
    """As many parts along ``axis`` as keep each at least ``min_slice_size`` bytes, at most
    ``max_partitions`` and at most the axis' length (strings count ``bytes_per_string_element``
    bytes an element), like TF's."""

    def _partitioner(shape, dtype) -> list[int]:
        dims = _dims(shape)
        if axis >= len(dims):
            raise ValueError(f"Cannot partition variable along axis {axis} when shape is only {dims}")
        size = _axis_size(dims, axis)
        total_size_bytes = _num_elements(dims) * _element_size(dtype, bytes_per_string_element)
        partitions = total_size_bytes / min_slice_size
        partitions_list = [1] * len(dims)
        partitions_list[axis] = max(1, min(size, max_partitions, int(math.ceil(partitions))))
        return partitions_list

    return _partitioner


def variable_axis_size_partitioner(
    max_shard_bytes: int, axis: int = 0, bytes_per_string_element: int = 16, max_shards: int | None = None
) -> Partitioner:
    """Parts along ``axis`` of at most ``max_shard_bytes`` each (at least one slice of the axis a
    part), at most ``max_shards`` of them when given, like TF's."""
    if max_shard_bytes < 1 or bytes_per_string_element < 1:
        raise ValueError(
            "Both max_shard_bytes and bytes_per_string_element must be positive. "
            f"Currently, max_shard_bytes is {max_shard_bytes} and "
            f"bytes_per_string_element is {bytes_per_string_element}"
        )
    if max_shards and max_shards < 1:
        raise ValueError("max_shards must be positive.")

    def _partitioner(shape, dtype) -> list[int]:
        dims = _dims(shape)
        size = _axis_size(dims, axis)
        if size == 0:  # TF divides by it
            raise ValueError(f"Cannot partition variable along axis {axis} of length 0 (shape {dims})")
        element_size = _element_size(dtype, bytes_per_string_element)
        partitions = [1] * len(dims)
        bytes_per_slice = 1.0 * (_num_elements(dims) / size) * element_size
        if bytes_per_slice == 0:  # an empty variable: TF divides by it too
            raise ValueError(f"Cannot partition an empty variable by size (shape {dims})")
        # how many slices fit in one shard of at most max_shard_bytes (at least one), then how
        # many shards the axis needs
        slices_per_shard = max(1, math.floor(max_shard_bytes / bytes_per_slice))
        axis_shards = int(math.ceil(1.0 * size / slices_per_shard))
        if max_shards:
            axis_shards = min(max_shards, axis_shards)
        partitions[axis] = axis_shards
        return partitions

    return _partitioner


def call_partitioner(partitioner: Partitioner, shape: Sequence[int], dtype) -> list[int]:
    """Call ``partitioner(shape=, dtype=)`` and check its answer as TF's ``get_variable`` does:
    a sequence, one count per axis, every count at least 1, at most one above 1."""
    if not callable(partitioner):
        raise ValueError(f"partitioner must be callable, got {partitioner!r}")
    dims = _dims(shape)
    if len(dims) < 1:
        raise ValueError(f"A partitioned Variable must have rank at least 1, shape: {dims}")
    slicing = partitioner(shape=tuple(dims), dtype=dtypes.resolve(dtype))
    if not isinstance(slicing, Sequence) or isinstance(slicing, (str, bytes)):
        raise ValueError(f"Partitioner must return a sequence, but saw: {slicing!r}")
    slicing = [int(p) for p in slicing]
    if len(slicing) != len(dims):
        raise ValueError(
            f"Partitioner returned a partition list that does not match the Variable's rank: {slicing} vs. {dims}"
        )
    if any(p < 1 for p in slicing):
        raise ValueError(f"Partitioner returned zero partitions for some axes: {slicing}")
    if sum(p > 1 for p in slicing) > 1:
        raise ValueError(f"Can only slice a variable along one dimension: shape: {dims}, partitioning: {slicing}")
    return slicing
