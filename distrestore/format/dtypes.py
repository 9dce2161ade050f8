"""TensorFlow ``DataType`` enum values and their numpy equivalents in a bundle's data file.

Quantized types come back as plain integer arrays of the same width; bfloat16, float8 and int4
use ml_dtypes (TF stores int4/uint4 one element per byte, value in the low nibble, which is
ml_dtypes' own layout).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from ..errors import UnsupportedCheckpointError

STRING = 7
VARIANT = 21


class DType(NamedTuple):
    enum: int
    name: str  # TF's name, e.g. "float32", "bfloat16", "string"
    numpy: np.dtype  # little-endian numpy dtype; object for strings and variants

    @property
    def is_string(self) -> bool:
        return self.enum == STRING

    @property
    def is_variant(self) -> bool:
        return self.enum == VARIANT

    @property
    def fixed_width(self) -> bool:
        return self.enum not in (STRING, VARIANT)

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_TABLE = [
    (1, "float32", "<f4"),
    (2, "float64", "<f8"),
    (3, "int32", "<i4"),
    (4, "uint8", "u1"),
    (5, "int16", "<i2"),
    (6, "int8", "i1"),
    (7, "string", object),
    (8, "complex64", "<c8"),
    (9, "int64", "<i8"),
    (10, "bool", "?"),
    (11, "qint8", "i1"),
    (12, "quint8", "u1"),
    (13, "qint32", "<i4"),
    (14, "bfloat16", ml_dtypes.bfloat16),
    (15, "qint16", "<i2"),
    (16, "quint16", "<u2"),
    (17, "uint16", "<u2"),
    (18, "complex128", "<c16"),
    (19, "float16", "<f2"),
    (21, "variant", object),
    (22, "uint32", "<u4"),
    (23, "uint64", "<u8"),
    (24, "float8_e5m2", ml_dtypes.float8_e5m2),
    (25, "float8_e4m3fn", ml_dtypes.float8_e4m3fn),
    (26, "float8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz),
    (27, "float8_e4m3b11fnuz", ml_dtypes.float8_e4m3b11fnuz),
    (28, "float8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz),
    (29, "int4", ml_dtypes.int4),
    (30, "uint4", ml_dtypes.uint4),
    (31, "int2", ml_dtypes.int2),
    (32, "uint2", ml_dtypes.uint2),
    (33, "float4_e2m1fn", ml_dtypes.float4_e2m1fn),
]

BY_ENUM: dict[int, DType] = {e: DType(e, n, np.dtype(d)) for e, n, d in _TABLE}
BY_NAME: dict[str, DType] = {d.name: d for d in BY_ENUM.values()}
BY_NAME.update({"float": BY_ENUM[1], "double": BY_ENUM[2], "half": BY_ENUM[19]})


def from_enum(enum: int, *, what: str = "tensor") -> DType:
    try:
        return BY_ENUM[enum]
    except KeyError:
        raise UnsupportedCheckpointError(
            f"{what} has TensorFlow dtype enum {enum}, which distrestore does not read "
            "(not a type TF saves in checkpoints, or one newer than this version knows)"
        ) from None


def from_numpy(dtype) -> DType:
    """The TF dtype for a numpy dtype (strings/bytes/object arrays -> string)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return BY_ENUM[STRING]
    for d in BY_ENUM.values():
        if d.numpy == dt.newbyteorder("<") and d.name not in ("qint8", "quint8", "qint32", "qint16", "quint16"):
            return d
    raise UnsupportedCheckpointError(f"numpy dtype {dt} has no TensorFlow checkpoint equivalent")


def resolve(dtype) -> DType:
    """Accept a TF name ("float32", "bfloat16", "qint8"), a numpy dtype or a DType."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str) and dtype in BY_NAME:
        return BY_NAME[dtype]
    if hasattr(dtype, "as_numpy_dtype") and hasattr(dtype, "name"):  # a tf.DType, without importing TF
        return BY_NAME[dtype.name]
    return from_numpy(dtype)
