#!/usr/bin/env python
"""Run the ``init_from_checkpoint`` scenarios through real TensorFlow and record what TF does.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python tests/scenarios/gen_init_from_checkpoint.py

Requires tensorflow-cpu 2.21 (TF is only the oracle). It writes two small TF1 ``Saver``
checkpoints (``ckpt_a``, ``ckpt_b``, deterministic values, relative ``checkpoint`` files) into
``tests/scenarios/init_from_checkpoint/``, also uses the committed fixture
``tests/fixtures/tf/tf1_sharded`` (5-way, uneven-row and column partitions, many dtypes), and
runs every scenario below in TF1 graph mode: ``tf.Graph()``, ``tf.compat.v1.get_variable`` (with
``partitioner=`` for partitioned variables), ``tf.compat.v1.train.init_from_checkpoint``,
``global_variables_initializer`` and ``Session.run``. ``expected.json`` records per scenario:

* the scenario itself (plain data; the test suite replays it through distrestore);
* ``initial``: every variable's value with no mapping applied (checks initializer semantics);
* ``tf``: either ``values`` after initialization, or ``error`` (class, message, and ``phase``:
  ``call`` when ``init_from_checkpoint`` raised, ``init`` when the initializer op failed), plus
  ``values_after_error`` for call-phase errors (TF has already applied the earlier pairs);
* ``ours``: where distrestore deliberately differs (eager dtype/shape errors, atomic calls,
  ``PartitionedVariable`` objects as targets), the expected distrestore outcome; values for the
  ``PartitionedVariable`` extension come from TF run with the equivalent list of parts.

Values are ``{shape, dtype, sha256}`` (``value_digest`` from ``tests/fixtures/digest.py``) and,
for partitioned variables, each part's TF slice spec and digest. The script checks every TF
outcome against the expectation declared in its scenario and fails loudly on a difference.
Variables' names are written without ``:0``; targets are encoded as: a string (a name), ``{"var":
name}`` (the Variable object), ``{"parts": name, "indices": [...]}`` (a list of part Variables),
``{"partitioned": name}`` (the PartitionedVariable object), ``{"parts_of": [a, b]}`` (the first
part of each of two partitioned variables).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "init_from_checkpoint"
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from digest import value_digest  # noqa: E402

CHECKPOINTS = {  # relative to the repository root
    "a": "tests/scenarios/init_from_checkpoint/ckpt_a",  # a directory (state file)
    "a_prefix": "tests/scenarios/init_from_checkpoint/ckpt_a/model.ckpt",
    "b": "tests/scenarios/init_from_checkpoint/ckpt_b/model.ckpt",
    "f": "tests/fixtures/tf/tf1_sharded/model.ckpt-7",
    "f_dir": "tests/fixtures/tf/tf1_sharded",
}


def _values(shape, dtype, k):
    n = int(np.prod(shape, dtype=np.int64))
    if np.dtype(dtype).kind in "iu":
        return (np.arange(n, dtype=np.int64) * 7 - k).reshape(shape).astype(dtype)
    return (np.arange(n, dtype=np.float64) * 0.25 - k).reshape(shape).astype(dtype)


# name -> (value, partitions or None)
CHECKPOINT_TENSORS = {
    "ckpt_a": {
        "old_scope_1/var1": (_values([20, 2], "float32", 3), None),
        "old_scope_1/var2": (_values([50, 4], "float32", 11), None),
        "old_scope_2/var3": (_values([100, 100], "float32", 1000), [5, 1]),
        "old_scope_2/ids": (_values([6], "int64", 5), None),
        "old_scope_2/table": (_values([3, 4], "float64", 2), None),
        "dup/a": (_values([4], "float32", 100), None),
        "dup/b": (_values([4], "float32", 200), None),
    },
    "ckpt_b": {
        "w": (_values([3, 4], "float32", 31), None),
        "b": (_values([4], "float32", 32), None),
        "step": (np.array(42, dtype=np.int64), None),
        "emb": (_values([11, 5], "float32", 33), [3, 1]),
        "head/w": (_values([4, 2], "float32", 34), None),
        "head/b": (_values([2], "float32", 35), None),
    },
}


# -- scenarios (plain data) -------------------------------------------------------------------


def V(name, shape, dtype="float32", partitions=None, init=None):
    return {"var": {"name": name, "shape": list(shape), "dtype": dtype, "partitions": partitions, "init": init}}


def CALL(ckpt, mapping, kind="dict"):
    pairs = list(mapping.items()) if isinstance(mapping, dict) else list(mapping)
    return {"call": {"ckpt": ckpt, "map": [list(p) for p in pairs], "as": kind}}


def ERR(tf_class, fragment, *, phase="call", ours=None, ours_fragment=None):
    """TF raises ``tf_class`` with ``fragment``; distrestore raises ``ours`` (default
    AssignmentMapError) at the call with ``ours_fragment`` (default: the same fragment)."""
    return {
        "tf_phase": phase,
        "tf_class": tf_class,
        "fragment": fragment,
        "ours_class": ours or "AssignmentMapError",
        "ours_fragment": ours_fragment or fragment,
    }


SCENARIOS = [
    # -- every syntax -------------------------------------------------------------------------
    dict(
        name="scope_to_scope",
        doc="'ckpt_scope/': 'scope/' (TF docstring example); other scopes untouched",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("new_scope_1/var2", [50, 4], init=0.5),
            V("other/untouched", [3], init=1.5),
            CALL("a", {"old_scope_1/": "new_scope_1/"}),
        ],
    ),
    dict(
        name="name_to_name",
        doc="'ckpt_scope/name': 'scope/name', across scopes",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("new_scope_2/var2", [50, 4]),
            V("new_scope_2/keep", [2, 2], init=-2.0),
            CALL("a_prefix", {"old_scope_1/var1": "new_scope_1/var1", "old_scope_1/var2": "new_scope_2/var2"}),
        ],
    ),
    dict(
        name="name_to_variable_object",
        doc="'name': Variable",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("x/y", [50, 4]),
            CALL("a", {"old_scope_1/var1": {"var": "new_scope_1/var1"}, "old_scope_1/var2": {"var": "x/y"}}),
        ],
    ),
    dict(
        name="partitioned_by_name",
        doc="'name': 'partitioned name' (same 5-way partitioning)",
        steps=[
            V("new_scope_2/var3", [100, 100], partitions=[5, 1], init=1.5),
            CALL("a", {"old_scope_2/var3": "new_scope_2/var3"}),
        ],
    ),
    dict(
        name="partitioned_by_parts_list",
        doc="'name': [part Variables] (var3._get_variable_list())",
        steps=[
            V("new_scope_2/var3", [100, 100], partitions=[5, 1]),
            CALL("a", {"old_scope_2/var3": {"parts": "new_scope_2/var3"}}),
        ],
    ),
    dict(
        name="partitioned_object",
        doc="'name': PartitionedVariable object: TF raises TypeError; distrestore treats it as its list of parts",
        steps=[
            V("new_scope_2/var3", [100, 100], partitions=[4, 1]),
            CALL("a", {"old_scope_2/var3": {"partitioned": "new_scope_2/var3"}}),
        ],
        extension={"tf_class": "TypeError", "tf_fragment": "PartitionedVariable"},
    ),
    dict(
        name="parts_subset_5_to_4",
        doc="a subset of parts [1, 3] of a 4-way variable; parts 0 and 2 keep init",
        steps=[
            V("new_scope_2/var3", [100, 100], partitions=[4, 1], init=1.5),
            CALL("a", {"old_scope_2/var3": {"parts": "new_scope_2/var3", "indices": [1, 3]}}),
        ],
    ),
    dict(
        name="scope_with_partitioned_5_to_2",
        doc="scope mapping cuts '/part_N' so all parts map to the full tensor",
        steps=[
            V("new_scope_2/var3", [100, 100], partitions=[2, 1]),
            V("new_scope_2/ids", [6], "int64"),
            CALL("a", {"old_scope_2/": "new_scope_2/"}),
        ],
    ),
    dict(
        name="root_to_scope",
        doc="'/': 'scope/' (checkpoint root into a scope), uneven 3-way -> 2-way",
        steps=[
            V("model/w", [3, 4]),
            V("model/b", [4]),
            V("model/step", [], "int64"),
            V("model/emb", [11, 5], partitions=[2, 1]),
            V("model/head/w", [4, 2]),
            V("model/head/b", [2]),
            CALL("b", {"/": "model/"}),
        ],
    ),
    dict(
        name="scope_to_root",
        doc="'ckpt_scope/': '/' (a scope into the root)",
        steps=[V("var1", [20, 2]), V("var2", [50, 4]), CALL("a", {"old_scope_1/": "/"})],
    ),
    dict(
        name="root_to_root",
        doc="'/': '/' maps every variable to the tensor of the same name",
        steps=[
            V("w", [3, 4]),
            V("b", [4], init=9.0),
            V("head/w", [4, 2]),
            V("emb", [11, 5], partitions=[1, 5]),
            CALL("b", {"/": "/"}),
        ],
    ),
    dict(
        name="pairs_one_tensor_many_vars",
        doc="a list of pairs: one tensor into several variables",
        steps=[
            V("a/var1", [20, 2]),
            V("b/var1", [20, 2]),
            V("c/var1", [20, 2]),
            CALL(
                "a",
                [
                    ("old_scope_1/var1", "a/var1"),
                    ("old_scope_1/var1", "b/var1"),
                    ("old_scope_1/var1", {"var": "c/var1"}),
                ],
                kind="pairs",
            ),
        ],
    ),
    dict(
        name="later_pair_wins_sorted",
        doc="pairs are sorted by checkpoint name: 'dup/b' is applied last",
        steps=[V("x/v", [4]), CALL("a", [("dup/b", "x/v"), ("dup/a", "x/v")], kind="pairs")],
    ),
    dict(
        name="later_call_wins",
        doc="a later call replaces the mapping of an earlier one",
        steps=[V("x/v", [4]), CALL("a", {"dup/b": "x/v"}), CALL("a", {"dup/a": "x/v"})],
    ),
    dict(
        name="part_by_name_takes_whole_tensor",
        doc="a part named as a plain variable gets the whole tensor",
        steps=[V("new/p", [8], partitions=[2], init=1.5), CALL("a", {"dup/a": "new/p/part_0"})],
    ),
    dict(
        name="scope_target_typo_maps_whole_scope",
        doc="TF quirk: a target name that is no variable is cut at its last '/' and used as a scope",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("new_scope_1/var2", [50, 4]),
            CALL("a", {"old_scope_1/": "new_scope_1/typo"}),
        ],
    ),
    dict(
        name="later_variables_not_covered",
        doc="scope mappings resolve at the call: a variable created later keeps its initializer",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            CALL("a", {"old_scope_1/": "new_scope_1/"}),
            V("new_scope_1/var2", [50, 4], init=1.5),
        ],
    ),
    # -- re-partitioning (fixture: big/part5 is 5 x 20 rows; part_rows 4/3/3; part_cols 4/3 cols)
    dict(
        name="repartition_5_to_2",
        doc="5-way checkpoint tensor into 2 parts (50 rows each)",
        steps=[V("p", [100, 8], partitions=[2, 1]), CALL("f", {"big/part5": "p"})],
    ),
    dict(
        name="repartition_5_to_4",
        doc="5-way into 4 parts (25 rows: every part straddles stored slices)",
        steps=[V("p", [100, 8], partitions=[4, 1]), CALL("f", {"big/part5": {"parts": "p"}})],
    ),
    dict(
        name="repartition_5_to_1_and_columns",
        doc="5-way row partition into one variable and into 2 column parts",
        steps=[
            V("whole", [100, 8]),
            V("cols", [100, 8], partitions=[1, 2]),
            CALL("f", [("big/part5", "whole"), ("big/part5", "cols")], kind="pairs"),
        ],
    ),
    dict(
        name="repartition_uneven_rows",
        doc="rows 4/3/3 -> 3/3/2/2; int64 rows 3/2/2 -> 4/3",
        steps=[
            V("r", [10, 3], partitions=[4, 1]),
            V("i", [7, 2], "int64", partitions=[2, 1]),
            CALL("f", {"part_rows": "r", "part_int64": "i"}),
        ],
    ),
    dict(
        name="repartition_uneven_cols",
        doc="columns 4/3 -> 3/2/2, and -> 2 row parts",
        steps=[
            V("c3", [4, 7], partitions=[1, 3]),
            V("c_rows", [4, 7], partitions=[2, 1]),
            CALL("f", [("part_cols", "c3"), ("part_cols", "c_rows")], kind="pairs"),
        ],
    ),
    dict(
        name="unpartitioned_into_partitioned",
        doc="plain checkpoint tensors into partitioned variables",
        steps=[
            V("w", [3, 4], partitions=[1, 2]),
            V("b", [4], "float64", partitions=[3]),
            CALL("f", {"scope1/w": "w", "scope1/b": "b"}),
        ],
    ),
    dict(
        name="fixture_scope_dtypes",
        doc="scope mapping over int64, bool, float16, bfloat16, string; a directory path",
        steps=[
            V("enc/v", [2, 2, 2], "int64", init=3),
            V("enc/flag", [3], "bool"),
            V("enc/half", [2], "float16"),
            V("enc/bf16", [2], "bfloat16"),
            V("enc/label", [3], "string", init="x"),
            V("misc/count", [], "int32"),
            V("misc/step", [], "int64"),
            CALL("f_dir", {"scope2/nested/": "enc/"}),
            CALL("f_dir", {"scope1/count": "misc/count", "global_step": "misc/step"}),
        ],
    ),
    dict(
        name="two_checkpoints",
        doc="one model built from two checkpoints (and three calls)",
        steps=[
            V("enc/var1", [20, 2]),
            V("enc/var2", [50, 4]),
            V("dec/w", [3, 4]),
            V("dec/b", [4]),
            V("dec/step", [], "int64"),
            V("dec/emb", [11, 5], partitions=[4, 1]),
            V("dec/head/w", [4, 2]),
            V("dec/head/b", [2]),
            V("big", [100, 8], partitions=[4, 1]),
            V("untouched", [2], init=7.0),
            CALL("a", {"old_scope_1/": "enc/"}),
            CALL("b", {"/": "dec/"}),
            CALL("f", {"big/part5": "big"}),
        ],
    ),
    # -- errors -------------------------------------------------------------------------------
    dict(
        name="err_tensor_missing",
        doc="name -> name with a tensor the checkpoint lacks",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/nope": "new_scope_1/var1"})],
        error=ERR("ValueError", "Tensor old_scope_1/nope is not found in"),
    ),
    dict(
        name="err_tensor_missing_in_scope",
        doc="a scope mapping where one variable has no tensor",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("new_scope_1/extra", [2]),
            CALL("a", {"old_scope_1/": "new_scope_1/"}),
        ],
        error=ERR("ValueError", "Tensor old_scope_1/extra (extra in old_scope_1/) is not found in"),
    ),
    dict(
        name="err_scope_only_name_to_non_scope",
        doc="'name': 'scope/' (the scope is no variable)",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/var1": "new_scope_1/"})],
        error=ERR(
            "ValueError",
            "Assignment map with scope only name new_scope_1 should map to scope "
            "only old_scope_1/var1. Should be 'scope/': 'other_scope/'.",
        ),
    ),
    dict(
        name="err_typo_variable_name",
        doc="a typo'd target name reads as a scope-only name",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/var1": "new_scope_1/vra1"})],
        error=ERR("ValueError", "Assignment map with scope only name new_scope_1 should map to scope only"),
    ),
    dict(
        name="err_checkpoint_name_colon0",
        doc="':0' on the checkpoint side: no such tensor",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/var1:0": "new_scope_1/var1"})],
        error=ERR("ValueError", "Tensor old_scope_1/var1:0 is not found in"),
    ),
    dict(
        name="err_variable_name_colon0",
        doc="':0' on the variable side: no such variable, so a scope name",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/var1": "new_scope_1/var1:0"})],
        error=ERR("ValueError", "Assignment map with scope only name new_scope_1 should map to scope only"),
    ),
    dict(
        name="err_shape_mismatch",
        doc="a single variable whose shape differs from the tensor's",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/var2": "new_scope_1/var1"})],
        error=ERR("ValueError", "doesn't match with shape of tensor old_scope_1/var2", ours="ShapeMismatchError"),
    ),
    dict(
        name="err_dtype_mismatch",
        doc="float64 tensor into a float32 variable: TF fails only at init",
        steps=[V("new/t", [3, 4]), CALL("a", {"old_scope_2/table": "new/t"})],
        error=ERR(
            "InvalidArgumentError",
            "does not equal original dtype",
            phase="init",
            ours="DTypeMismatchError",
            ours_fragment="dtype float64 does not match variable new/t",
        ),
    ),
    dict(
        name="err_partitioned_shape_mismatch",
        doc="partitioned variable of another full shape: TF fails at init",
        steps=[V("p", [50, 100], partitions=[2, 1]), CALL("a", {"old_scope_2/var3": "p"})],
        error=ERR(
            "InvalidArgumentError",
            "100",
            phase="init",
            ours="ShapeMismatchError",
            ours_fragment="doesn't match with shape of tensor old_scope_2/var3",
        ),
    ),
    dict(
        name="err_slices_from_different_tensors",
        doc="a list mixing parts of two partitioned variables",
        steps=[
            V("p", [4], partitions=[2]),
            V("q", [4], partitions=[2]),
            CALL("a", {"dup/a": {"parts_of": ["p", "q"]}}),
        ],
        error=ERR("ValueError", "Slices must all be from the same tensor: p != q"),
    ),
    dict(
        name="err_atomic_call",
        doc="the second pair fails: TF has applied the first; distrestore records nothing",
        steps=[
            V("new_scope_1/var1", [20, 2]),
            V("new_scope_1/var2", [50, 4]),
            CALL("a", {"old_scope_1/var1": "new_scope_1/var1", "zzz/missing": "new_scope_1/var2"}),
        ],
        error=ERR("ValueError", "Tensor zzz/missing is not found in"),
    ),
    dict(
        name="err_scope_target_without_slash",
        doc="TF quirk: 'scope/': 'name' (no '/') strips the first character",
        steps=[V("new_scope_1/var1", [20, 2]), CALL("a", {"old_scope_1/": "new_scope_1"})],
        error=ERR("ValueError", "Tensor old_scope_1/ew_scope_1/var1 (ew_scope_1/var1 in old_scope_1/) is not found in"),
    ),
    dict(
        name="err_part_substring_in_scope",
        doc="TF quirk: a plain variable 'new/part_x' is cut at '/part_'",
        steps=[V("new/part_x", [4]), CALL("a", {"dup/": "new/"})],
        error=ERR("ValueError", "Tensor dup ( in dup/) is not found in"),
    ),
]


# -- TensorFlow --------------------------------------------------------------------------------


def _tf():
    import tensorflow as tf

    return tf


def write_checkpoints(out: Path) -> None:
    tf = _tf()
    v1 = tf.compat.v1
    for ckpt, tensors in CHECKPOINT_TENSORS.items():
        d = out / ckpt
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        g = tf.Graph()
        with g.as_default():
            for name, (value, partitions) in tensors.items():

                def init(shape, dtype=None, partition_info=None, value=value):
                    if partition_info is None:
                        return tf.constant(value)
                    box = tuple(slice(o, o + s) for o, s in zip(partition_info.var_offset, shape))
                    return tf.constant(value[box])

                v1.get_variable(
                    name,
                    shape=value.shape,
                    dtype=tf.as_dtype(value.dtype),
                    initializer=init,
                    partitioner=(lambda shape, dtype, p=partitions: list(p)) if partitions else None,
                )
            saver = v1.train.Saver(save_relative_paths=True)
            with v1.Session(graph=g) as sess:
                sess.run(v1.global_variables_initializer())
                saver.save(sess, str(d / "model.ckpt"), write_meta_graph=False)
        reader = tf.train.load_checkpoint(str(d / "model.ckpt"))
        for name, (value, _) in tensors.items():
            assert np.array_equal(reader.get_tensor(name), value), name


def _tf_variable(spec):
    tf = _tf()
    v1 = tf.compat.v1
    dtype = tf.as_dtype(spec["dtype"])
    init = v1.zeros_initializer() if spec["init"] is None else v1.constant_initializer(spec["init"])
    parts = spec["partitions"]
    return v1.get_variable(
        spec["name"],
        shape=spec["shape"],
        dtype=dtype,
        initializer=init,
        partitioner=(lambda shape, dtype: list(parts)) if parts else None,
    )


def _tf_target(target, objs):
    if isinstance(target, str):
        return target
    if "var" in target:
        return objs[target["var"]]
    if "partitioned" in target:
        return objs[target["partitioned"]]
    if "parts" in target:
        parts = list(objs[target["parts"]])
        return [parts[i] for i in target["indices"]] if "indices" in target else parts
    if "parts_of" in target:
        return [list(objs[n])[0] for n in target["parts_of"]]
    raise ValueError(f"unknown target {target!r}")


def _record(value, dtype_name):
    value = np.asarray(value) if not isinstance(value, bytes) else value
    return {"shape": list(np.shape(value)), "dtype": dtype_name, "sha256": value_digest(value)}


def _error(phase, e):
    tf = _tf()
    msg = e.message if isinstance(e, tf.errors.OpError) else str(e)
    if "Node: " in msg:  # an op error: drop the graph-construction traceback
        msg = msg[msg.rindex("Node: ") :]
    msg = msg.replace(str(REPO) + os.sep, "<repo>/")  # no machine paths in the committed file
    # TF's "not found" message lists the whole checkpoint; keep the head
    return {"phase": phase, "class": type(e).__name__, "message": msg[:600]}


def run_tf(scenario, paths, *, calls=True, substitute_partitioned=False):
    """Run one scenario through TF; ``paths`` maps checkpoint keys to paths.

    Returns ``{"values": ...}`` or ``{"error": ..., "values_after_error": ...}``.
    """
    tf = _tf()
    v1 = tf.compat.v1
    g = tf.Graph()
    error = None
    with g.as_default():
        objs, specs = {}, {}
        for step in scenario["steps"]:
            if "var" in step:
                spec = step["var"]
                objs[spec["name"]] = _tf_variable(spec)
                specs[spec["name"]] = spec
            elif calls and error is None:
                call = step["call"]
                pairs = []
                for ck, t in call["map"]:
                    if substitute_partitioned and isinstance(t, dict) and "partitioned" in t:
                        t = {"parts": t["partitioned"]}
                    pairs.append((ck, _tf_target(t, objs)))
                mapping = dict(pairs) if call["as"] == "dict" else pairs
                try:
                    v1.train.init_from_checkpoint(str(paths[call["ckpt"]]), mapping)
                except Exception as e:
                    error = _error("call", e)
        with v1.Session(graph=g) as sess:
            try:
                sess.run(v1.global_variables_initializer())
            except tf.errors.OpError as e:
                return {"error": _error("init", e)}
            values = {}
            for name, obj in objs.items():
                dt = specs[name]["dtype"]
                if specs[name]["partitions"]:
                    parts = list(obj)
                    part_values = sess.run(parts)
                    full = np.empty(specs[name]["shape"], dtype=part_values[0].dtype)
                    for p, pv in zip(parts, part_values):
                        info = p._save_slice_info
                        full[tuple(slice(o, o + s) for o, s in zip(info.var_offset, info.var_shape))] = pv
                    rec = _record(full, dt)
                    rec["parts"] = [
                        dict(_record(pv, dt), spec=p._save_slice_info.spec, name=p.op.name)
                        for p, pv in zip(parts, part_values)
                    ]
                else:
                    rec = _record(sess.run(obj), dt)
                values[name] = rec
    if error is not None:
        return {"error": error, "values_after_error": values}
    return {"values": values}


def _check(scenario, tf_result):
    """The TF outcome must be what the scenario declares (so a TF change is noticed)."""
    name = scenario["name"]
    declared = scenario.get("error") or (
        {
            "tf_phase": "call",
            "tf_class": scenario["extension"]["tf_class"],
            "fragment": scenario["extension"]["tf_fragment"],
        }
        if "extension" in scenario
        else None
    )
    if declared is None:
        assert "values" in tf_result, f"{name}: TF raised {tf_result.get('error')}"
        return
    err = tf_result.get("error")
    assert err is not None, f"{name}: TF did not raise"
    assert err["phase"] == declared["tf_phase"], f"{name}: TF raised at {err['phase']}: {err}"
    assert err["class"] == declared["tf_class"], f"{name}: TF raised {err}"
    assert declared["fragment"] in err["message"], f"{name}: {declared['fragment']!r} not in {err['message']!r}"


def generate(out: Path = OUT) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoints(out)
    paths = {k: REPO / v for k, v in CHECKPOINTS.items()}
    results = []
    for scenario in SCENARIOS:
        initial = run_tf(scenario, paths, calls=False)["values"]
        tf_result = run_tf(scenario, paths)
        _check(scenario, tf_result)
        entry = dict(scenario, initial=initial, tf=tf_result)
        if "extension" in scenario:
            same = run_tf(scenario, paths, substitute_partitioned=True)
            assert "values" in same, same
            entry["ours"] = {"values": same["values"]}
        elif "error" in scenario:
            entry["ours"] = {
                "error": {"class": scenario["error"]["ours_class"], "fragment": scenario["error"]["ours_fragment"]},
                "values": initial,
            }  # a failed call records nothing
        else:
            entry["ours"] = {"values": tf_result["values"]}
        results.append(entry)
        print(f"{scenario['name']:40s} {'error ' + tf_result['error']['class'] if 'error' in tf_result else 'ok'}")
    tf = _tf()
    doc = {
        "tf_version": tf.__version__,
        "checkpoints": CHECKPOINTS,
        "generator": "tests/scenarios/gen_init_from_checkpoint.py",
        "scenarios": results,
    }
    (out / "expected.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out / 'expected.json'}; {len(results)} scenarios; directory size {size} bytes")
    assert size < 1_000_000
    return doc


if __name__ == "__main__":
    generate()
