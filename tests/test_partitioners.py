"""TF's partitioners (``distrestore.partitioners``) against live TF: the same partition counts for a
grid of shapes, dtypes (strings included) and limits, the same errors, and through
``VariableStore.get_variable(partitioner=...)`` the same parts (names, shapes, offsets) as
``tf.compat.v1.get_variable(..., partitioner=...)``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import distrestore as dr
from distrestore.partitioners import call_partitioner

SHAPES = [(1,), (7,), (10, 3), (100, 8), (1000, 64), (3, 1000), (2, 3, 4), (123457, 3), (0, 4), (5, 0), ()]
DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int64", "bool", "complex128", "string", "qint8"]
AXES = [0, 1, -1, 3]


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _tf_result(tf, make, args, shape, dtype):
    """("ok", list) or ("error", exception type) for TF's partitioner."""
    try:
        p = make(*args)
        return "ok", list(p(shape=tf.TensorShape(shape), dtype=tf.as_dtype(dtype)))
    except Exception as e:  # TF's own failures: ValueError, and accidents (IndexError, ZeroDivisionError)
        return "error", type(e)


def _ours(make, args, shape, dtype):
    try:
        p = make(*args)
        return "ok", list(p(shape=shape, dtype=dtype))
    except Exception as e:
        return "error", type(e)


def _compare(tf, tf_make, our_make, arg_grid):
    checked = 0
    for args, shape, dtype in itertools.product(arg_grid, SHAPES, DTYPES):
        theirs = _tf_result(tf, tf_make, args, shape, dtype)
        ours = _ours(our_make, args, shape, dtype)
        where = f"args={args} shape={shape} dtype={dtype}"
        if theirs[0] == "ok":
            assert ours == theirs, where
            checked += 1
        else:
            # where TF fails, so do we: with ValueError where TF says ValueError, and with
            # ValueError too where TF fails by accident (IndexError, ZeroDivisionError)
            assert ours == ("error", ValueError), f"{where}: TF raised {theirs[1].__name__}, we gave {ours}"
    return checked


def test_fixed_size_partitioner_matches_tf(tf):
    grid = [(n, axis) for n in (1, 2, 3, 5, 8, 1000) for axis in AXES]
    assert _compare(tf, tf.compat.v1.fixed_size_partitioner, dr.fixed_size_partitioner, grid) > 1000


def test_min_max_variable_partitioner_matches_tf(tf):
    grid = [
        (maxp, axis, min_slice, bpse)
        for maxp in (1, 2, 4, 8, 100)
        for axis in AXES
        for min_slice in (1, 64, 1000, 256 << 10)
        for bpse in (1, 16, 100)
    ]
    assert _compare(tf, tf.compat.v1.min_max_variable_partitioner, dr.min_max_variable_partitioner, grid) > 10_000


def test_variable_axis_size_partitioner_matches_tf(tf):
    grid = [
        (max_bytes, axis, bpse, max_shards)
        for max_bytes in (1, 100, 4096, 1 << 20, (64 << 20) - 1)
        for axis in AXES
        for bpse in (1, 16)
        for max_shards in (None, 0, 2, 3)
    ]
    assert _compare(tf, tf.compat.v1.variable_axis_size_partitioner, dr.variable_axis_size_partitioner, grid) > 3000


@pytest.mark.parametrize("args", [(0,), (-5,), (100, 0, 0), (100, 0, 16, -1)])
def test_variable_axis_size_partitioner_refuses_bad_limits_like_tf(tf, args):
    with pytest.raises(ValueError):
        tf.compat.v1.variable_axis_size_partitioner(*args)
    with pytest.raises(ValueError):
        dr.variable_axis_size_partitioner(*args)


def test_min_max_docstring_example():
    # TF's docstring: float32 [1024, 1024] with the default 256K minimum slice -> 16 partitions
    p = dr.min_max_variable_partitioner(max_partitions=100)
    assert p(shape=[1024, 1024], dtype="float32") == [16, 1]
    assert dr.min_max_variable_partitioner(max_partitions=4)(shape=[1024, 1024], dtype="float32") == [4, 1]


def test_partitioners_accept_numpy_and_tf_dtypes_and_shapes(tf):
    p = dr.variable_axis_size_partitioner(100)
    expect = p(shape=(50, 4), dtype="float32")
    assert p(shape=[50, 4], dtype=np.float32) == expect
    assert p(shape=tf.TensorShape([50, 4]), dtype=tf.float32) == expect
    assert p(shape=(50, 4), dtype=dr.Variable(shape=[1]).tf_dtype) == expect
    with pytest.raises(ValueError, match="not fully defined"):
        p(shape=[None, 4], dtype="float32")


# -- through VariableStore.get_variable --------------------------------------------------------

CASES = [
    ("fixed", (3,), (10, 3), "float32"),
    ("fixed", (5,), (100, 8), "float32"),
    ("fixed", (2, 1), (4, 7), "int64"),
    ("fixed", (8,), (3, 2), "float32"),  # more shards than rows: 3 parts
    ("fixed", (1,), (9, 2), "float32"),  # one part, still partitioned
    ("min_max", (8, 0, 1024), (1000, 64), "float32"),
    ("min_max", (8, 1, 64), (3, 1000), "bfloat16"),
    ("min_max", (4, 0, 100, 16), (50,), "string"),
    ("axis_size", (4096,), (1000, 64), "float32"),
    ("axis_size", (4096, 0, 16, 3), (1000, 64), "float64"),
    ("axis_size", (100, 0, 7), (30, 2), "string"),
    ("axis_size", (1 << 20, 1), (3, 100_000), "int8"),
]


def _makers(tf):
    return {
        "fixed": (tf.compat.v1.fixed_size_partitioner, dr.fixed_size_partitioner),
        "min_max": (tf.compat.v1.min_max_variable_partitioner, dr.min_max_variable_partitioner),
        "axis_size": (tf.compat.v1.variable_axis_size_partitioner, dr.variable_axis_size_partitioner),
    }


def test_get_variable_with_partitioner_makes_tf_parts(tf):
    makers = _makers(tf)
    with tf.Graph().as_default():
        for i, (kind, args, shape, dtype) in enumerate(CASES):
            tf_make, our_make = makers[kind]
            name = f"case{i}/v"
            theirs = tf.compat.v1.get_variable(name, shape=shape, dtype=tf.as_dtype(dtype), partitioner=tf_make(*args))
            store = dr.VariableStore()
            ours = store.get_variable(name, shape=shape, dtype=dtype, partitioner=our_make(*args))
            tf_parts = [
                (p.name.split(":")[0], tuple(p.shape.as_list()), tuple(p._save_slice_info.var_offset)) for p in theirs
            ]
            our_parts = [(p.name, p.shape, tuple(p.offset)) for p in ours.parts]
            assert our_parts == tf_parts, (kind, args, shape, dtype)
            assert [v.name for v in ours.parts] == [f"{name}/part_{j}" for j in range(len(tf_parts))]


def test_get_variable_partitioner_errors_like_tf(tf):
    store = dr.VariableStore()
    # a scalar's partitioner is ignored, as TF does
    assert isinstance(store.get_variable("scalar", shape=[], partitioner=dr.fixed_size_partitioner(2)), dr.Variable)
    with pytest.raises(ValueError, match="rank at least 1"):
        call_partitioner(dr.fixed_size_partitioner(2), (), "float32")
    with pytest.raises(ValueError, match="zero partitions"):
        store.get_variable("empty", shape=[0, 3], partitioner=dr.fixed_size_partitioner(2))
    with pytest.raises(ValueError, match="one dimension"):
        store.get_variable("two", shape=[4, 4], partitioner=lambda shape, dtype: [2, 2])
    with pytest.raises(ValueError, match="rank"):
        store.get_variable("rank", shape=[4, 4], partitioner=lambda shape, dtype: [2])
    with pytest.raises(ValueError, match="not both"):
        store.get_variable("both", shape=[4], partitions=[2], partitioner=dr.fixed_size_partitioner(2))
    # TF fails the same cases
    with tf.Graph().as_default():
        scalar = tf.compat.v1.get_variable("scalar", shape=[], partitioner=tf.compat.v1.fixed_size_partitioner(2))
        assert isinstance(scalar, tf.Variable)
        with pytest.raises(ValueError):
            tf.compat.v1.get_variable("empty", shape=[0, 3], partitioner=tf.compat.v1.fixed_size_partitioner(2))
        with pytest.raises(ValueError):
            tf.compat.v1.get_variable("two", shape=[4, 4], partitioner=lambda shape, dtype: [2, 2])


def test_call_partitioner_validates():
    assert call_partitioner(dr.fixed_size_partitioner(3), (10, 3), "float32") == [3, 1]
    with pytest.raises(ValueError, match="sequence"):
        call_partitioner(lambda shape, dtype: 3, (10,), "float32")
    with pytest.raises(ValueError, match="callable"):
        call_partitioner(3, (10,), "float32")


def test_partitioned_store_restores_from_a_tf_partitioned_checkpoint(fixtures_dir):
    # big/part5 was saved by TF in 5 parts of 20 rows; restore it into min_max's partitioning
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    store = dr.VariableStore()
    v = store.get_variable(
        "big/part5", shape=[100, 8], partitioner=dr.min_max_variable_partitioner(max_partitions=3, min_slice_size=64)
    )
    assert len(v.parts) == 3 and [p.shape for p in v.parts] == [(34, 8), (33, 8), (33, 8)]
    dr.init_from_checkpoint(prefix, {"big/part5": "big/part5"}, store=store)
    store.initialize()
    np.testing.assert_array_equal(v.numpy(), dr.load_variable(prefix, "big/part5"))
