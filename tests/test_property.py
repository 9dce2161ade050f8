"""Property tests against live TF: random dicts of tensors (names with '/' and unicode, shapes
with zero dimensions and scalars, many dtypes, values with nan/inf and arbitrary bit patterns,
arbitrary byte strings) written by TF's ``SaveV2`` and read by distrestore bit-exactly, and
written by ``dr.save_tensors`` and read by TF bit-exactly. Skipped without TF.
"""

from __future__ import annotations

import os
import tempfile

import ml_dtypes
import numpy as np
import pytest
from checks import assert_bit_exact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import distrestore as dr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

NATIVE = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "complex64",
    "complex128",
]
# ml_dtypes types whose every bit pattern we generate from raw bytes (nan payloads included)
RAW_BITS = {
    "bfloat16": (ml_dtypes.bfloat16, np.uint16),
    "float8_e5m2": (ml_dtypes.float8_e5m2, np.uint8),
    "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8),
}
NIBBLES = {"int4": (ml_dtypes.int4, -8, 7), "uint4": (ml_dtypes.uint4, 0, 15)}
DTYPES = NATIVE + list(RAW_BITS) + list(NIBBLES) + ["string"]

NAME_CHARS = st.sampled_from(list("abcxyz_019/.-:") + ["ü", "名", "✓", "Ω", " "])
NAMES = st.text(NAME_CHARS, min_size=1, max_size=12)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(SHAPES)
    n = int(np.prod(shape))
    if dtype == "string":
        values = draw(
            st.lists(st.one_of(st.binary(max_size=20), st.binary(min_size=128, max_size=400)), min_size=n, max_size=n)
        )
        arr = np.empty(n, dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    if dtype in RAW_BITS:
        np_dt, bits = RAW_BITS[dtype]
        raw = draw(hnp.arrays(bits, shape))
        return raw.view(np_dt)
    if dtype in NIBBLES:
        np_dt, lo, hi = NIBBLES[dtype]
        return draw(hnp.arrays(np.int8, shape, elements=st.integers(lo, hi))).astype(np_dt)
    # from_dtype: nan, +-inf, -0.0, subnormals and extremes for floats; full range for ints
    return draw(hnp.arrays(np.dtype(dtype), shape))


TENSOR_DICTS = st.dictionaries(NAMES, tensors(), min_size=1, max_size=6)


def _as_returned(arr: np.ndarray):
    """What a reader returns for a stored value: numpy scalar / bytes for rank 0."""
    if arr.ndim == 0:
        return arr[()] if arr.dtype != object else bytes(arr[()])
    return arr


@SETTINGS
@given(TENSOR_DICTS)
def test_tf_writes_distrestore_reads(values):
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "ckpt")
        names = list(values)
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(values[n]) for n in names],
        )
        assert dr.list_variables(prefix) == sorted((n, list(v.shape)) for n, v in values.items())
        reader = dr.load_checkpoint(prefix)
        for n, v in values.items():
            assert_bit_exact(reader.get_tensor(n), _as_returned(v), n)
        restored = dr.restore_tensors(prefix)
        for n, v in values.items():
            assert_bit_exact(restored[n], v, n)


@SETTINGS
@given(TENSOR_DICTS, st.integers(1, 3))
def test_distrestore_writes_tf_reads(values, num_shards):
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "ckpt")
        dr.save_tensors(prefix, values, num_shards=num_shards)
        assert [(k, list(s)) for k, s in tf.train.list_variables(prefix)] == sorted(
            (n, list(v.shape)) for n, v in values.items()
        )
        reader = tf.train.load_checkpoint(prefix)
        dtype_map = reader.get_variable_to_dtype_map()
        for n, v in values.items():
            assert_bit_exact(reader.get_tensor(n), _as_returned(v), n)
            assert dtype_map[n].name == ("string" if v.dtype == object else v.dtype.name), n


@SETTINGS
@given(st.data())
def test_partitioned_slices_written_by_tf_read_by_distrestore(data):
    """A tensor saved by TF as random row/column blocks reads back whole and in random regions."""
    # string and float16 too: TF cannot stitch those (no copy kernel), distrestore can
    dtype = data.draw(
        st.sampled_from(["float32", "int64", "bfloat16", "bool", "complex64", "float16", "string"]), "dtype"
    )
    rows, cols = data.draw(st.integers(1, 8), "rows"), data.draw(st.integers(1, 5), "cols")
    full = (np.arange(rows * cols) * 3 - 7).reshape(rows, cols)
    if dtype == "bool":
        full = full % 2 == 0
    elif dtype == "string":
        full = np.array([str(x).encode() * (x % 4) + b"\x00" for x in full.ravel()], dtype=object).reshape(rows, cols)
    else:
        full = full.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, rows - 1), max_size=3), "cuts"))) if rows > 1 else []
    bounds = list(zip([0] + cuts, cuts + [rows]))
    specs, parts = [], []
    for a, b in bounds:
        if data.draw(st.booleans(), "split cols") and cols > 1:
            c = data.draw(st.integers(1, cols - 1), "col cut")
            for c0, c1 in ((0, c), (c, cols)):
                specs.append(f"{rows} {cols} {a},{b - a}:{c0},{c1 - c0}")
                parts.append(full[a:b, c0:c1])
        else:
            specs.append(f"{rows} {cols} {a},{b - a}:-")
            parts.append(full[a:b])
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "p")
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=["t/part"] * len(specs),
            shape_and_slices=specs,
            tensors=[tf.constant(p) for p in parts],
        )
        reader = dr.load_checkpoint(prefix)
        assert dr.list_variables(prefix) == [("t/part", [rows, cols])]
        assert_bit_exact(reader.get_tensor("t/part"), full)
        r0 = data.draw(st.integers(0, rows), "r0")
        r1 = data.draw(st.integers(r0, rows), "r1")
        c0 = data.draw(st.integers(0, cols), "c0")
        c1 = data.draw(st.integers(c0, cols), "c1")
        assert_bit_exact(reader.get_slice("t/part", (slice(r0, r1), slice(c0, c1))), full[r0:r1, c0:c1])
