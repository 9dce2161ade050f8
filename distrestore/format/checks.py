"""What an index entry may claim: the rules checked before anything is allocated or read.

An index is a few bytes that can claim anything: a shape of 10^15 elements, a string tensor of
2^63 bytes, a size that disagrees with its shape. Each claim is checked against what the bytes
can justify before any buffer is sized from it: shapes exactly (Python integers, no wrapping),
sizes against shapes, and (by the index, which knows its files) locations against data files.
Pure functions: no I/O. docs/hostile-input.md lists every rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CorruptCheckpointError, UnsupportedCheckpointError
from .dtypes import DType

INT64_MAX = 2**63 - 1
MAX_RANK = 64  # numpy's NPY_MAXDIMS: no array has more dimensions
STRING_OVERHEAD = 4  # a string tensor's masked CRC32C of its lengths, after them
VARIANT_MIN_ELEMENT = 5  # a variant element: a length varint (>= 1 byte) and a 4-byte CRC32C
INVALID = -2  # ``expected_size`` of an entry whose shape is invalid: no stored size matches it


def num_elements(shape: Sequence[int]) -> int:
    """The exact product of the dimensions (a Python integer: no overflow)."""
    n = 1
    for d in shape:
        n *= d
    return n


def check_shape(shape: Sequence[int], dtype: DType, where: str) -> None:
    """Refuse a shape no tensor can have (CorruptCheckpointError: TF's "Invalid tensor shape")
    or no numpy array can have (UnsupportedCheckpointError)."""
    if any(d < 0 for d in shape):
        raise CorruptCheckpointError(f"{where}: invalid tensor shape {list(shape)} (a negative dimension)")
    if num_elements(shape) > INT64_MAX:
        raise CorruptCheckpointError(f"{where}: invalid tensor shape {list(shape)} (more than 2^63 - 1 elements)")
    if len(shape) > MAX_RANK:
        raise UnsupportedCheckpointError(
            f"{where}: shape of rank {len(shape)}; numpy arrays have at most {MAX_RANK} dimensions"
        )
    # numpy sizes an array by the product of its nonzero dimensions, even an empty one
    if num_elements([d for d in shape if d]) * max(dtype.itemsize, 1) > INT64_MAX:
        raise UnsupportedCheckpointError(f"{where}: numpy cannot make an array of shape {list(shape)}")


def expected_size(dtype: DType, shape: Sequence[int]) -> int:
    """Stored bytes of a fixed-width tensor of this shape; -1 for strings and variants (their
    size is checked by ``check_stored_size``), ``INVALID`` where the shape is invalid or the size
    would pass 2^63 - 1 bytes (no file holds it)."""
    if not dtype.fixed_width:
        return -1
    if any(d < 0 for d in shape):
        return INVALID
    n = num_elements(shape) * dtype.itemsize
    return n if n <= INT64_MAX else INVALID


def check_stored_size(dtype: DType, count: int, size: int, name: str, where: str) -> None:
    """The entry's byte size must fit its element count: exactly for fixed-width types (TF's
    "Invalid size in bundle entry"), at least one length byte per string plus the 4-byte length
    checksum, at least 5 bytes per variant element. So no element count passes what the entry's
    bytes (themselves bounded by the data file) can hold."""
    if dtype.fixed_width:
        want = count * dtype.itemsize
        if size != want:
            raise CorruptCheckpointError(
                f"{where}: invalid size in bundle entry for {name!r}: {size} bytes, expected {want}"
            )
    elif dtype.is_string:
        if size < count + STRING_OVERHEAD:
            raise CorruptCheckpointError(
                f"{where}: string tensor {name!r} of {count} elements needs at least {count + STRING_OVERHEAD} bytes "
                f"(a length each and a 4-byte checksum); the entry has {size}"
            )
    elif size < VARIANT_MIN_ELEMENT * count:
        raise CorruptCheckpointError(
            f"{where}: variant tensor {name!r} of {count} elements needs at least {VARIANT_MIN_ELEMENT * count} bytes; "
            f"the entry has {size}"
        )
