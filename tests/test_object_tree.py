"""``load_object_tree``: TF2 checkpoints as objects without the model's code, against the TF-written
fixtures (every value bit-exact by ``expected.json``'s digests), TF's status assertions, the
paths ``distrestore tree`` prints, subtrees, and the node-kind rules."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from digest import value_digest

import distrestore as dr
from distrestore.format.object_graph import (
    ObjectGraph,
    ObjectReference,
    SerializedTensor,
    SlotVariableReference,
    TrackableObject,
)
from distrestore.object_tree import LIST, NODE, OPTIMIZER, VARIABLE, format_object_tree, object_paths, plan_object_tree

# (fixture directory, prefix inside it, key in expected.json's "other_checkpoints" or None)
TF2_FIXTURES = [
    ("tf2_keras", "ckpt-1", None),
    ("tf2_keras", "model_only", "model_only"),
    ("tf1_adam", "ckpt-1", None),
    ("saved_model", None, None),
    ("manager", "ckpt-4", None),
]


def _expected(fixtures_dir, name, other):
    data = json.loads((fixtures_dir / name / "expected.json").read_text())
    return data["other_checkpoints"][other]["tensors"] if other else data["tensors"]


def _reach(root, path: str):
    """Follow a printed path (``.a._b[1]['x.y']``) from ``root``."""
    obj = root
    for attr, index, quoted in re.findall(r"\.([A-Za-z_]\w*)|\[(\d+)\]|\[('(?:[^'\\]|\\.)*')\]", path):
        obj = getattr(obj, attr) if attr else obj[int(index)] if index else obj[quoted[1:-1]]
    return obj


def _source(fixtures_dir, name, prefix):
    return str(fixtures_dir / name / prefix) if prefix else str(fixtures_dir / name)


@pytest.mark.parametrize("name,prefix,other", TF2_FIXTURES, ids=lambda v: str(v))
def test_every_value_bit_exact_and_consumed(fixtures_dir, name, prefix, other):
    source = _source(fixtures_dir, name, prefix)
    expected = _expected(fixtures_dir, name, other)
    tree, status = dr.load_object_tree(source, return_status=True)
    status.assert_consumed()  # a full load binds every checkpointed value, as TF's status says
    status.assert_existing_objects_matched()
    status.assert_nontrivial_match()
    index = dr.open_checkpoint(source)
    paths = object_paths(dr.read_object_graph(index), index.entries)
    assert paths
    seen = set()
    for path, key in paths.items():
        var = _reach(tree, path)
        assert isinstance(var, dr.Variable), path
        value = var.numpy()
        assert value_digest(value) == expected[key]["sha256"], (path, key)
        assert list(value.shape) == expected[key]["shape"] and var.tf_dtype.name == expected[key]["dtype"]
        seen.add(key)
    # every value but the graph itself is reachable by a printed path (slots: below)
    slot_keys = {k for k in expected if "/.OPTIMIZER_SLOT/" in k}
    assert seen | slot_keys | {"_CHECKPOINTABLE_OBJECT_GRAPH"} == set(expected)


def test_slot_variables_through_the_optimizer(fixtures_dir):
    expected = _expected(fixtures_dir, "tf1_adam", None)
    tree = dr.load_object_tree(fixtures_dir / "tf1_adam")
    assert isinstance(tree.opt, dr.Optimizer) and tree.opt.get_slot_names() == ["m", "v"]
    for var in ("w", "b"):
        for slot in ("m", "v"):
            value = tree.opt.get_slot(getattr(tree.net, var), slot).numpy()
            assert (
                value_digest(value)
                == expected[f"net/{var}/.OPTIMIZER_SLOT/opt/{slot}/.ATTRIBUTES/VARIABLE_VALUE"]["sha256"]
            )


def test_keras_tree_shares_objects_and_lists(fixtures_dir):
    tree = dr.load_object_tree(fixtures_dir / "tf2_keras")
    ops = tree.model._functional._operations
    assert isinstance(ops, dr.NodeList) and len(ops) == 3
    assert ops[1]._kernel is tree.optimizer._trainable_variables[0]  # one object, two paths (as in TF)
    assert tree.optimizer._momentums[0] is tree.optimizer._variables[2]
    assert ops[1]._kernel.name == "sequential/dense/kernel"
    assert ops[1]["_kernel"] is ops[1]._kernel and ops["1"] is ops[1]


def test_tree_prints_python_paths_and_layer_names(fixtures_dir):
    index = dr.open_checkpoint(fixtures_dir / "tf2_keras" / "model_only")
    text = format_object_tree(dr.read_object_graph(index), index.entries)
    assert "└── ._operations  (list of 3)" in text
    assert re.search(r"├── \[1\]  sequential/dense\n", text)  # the layer's name, from its variables' names
    assert "._kernel  float32[4, 8]  sequential/dense/kernel" in text
    full = dr.open_checkpoint(fixtures_dir / "tf2_keras")
    text = format_object_tree(dr.read_object_graph(full), full.entries)
    assert "(same variable as .model._functional._operations[1]._kernel)" in text


@pytest.mark.parametrize(
    "path",
    [
        ".model._functional._operations[2]",
        "model/_functional/_operations/2",
        ("model", "_functional", "_operations", "2"),
    ],
)
def test_path_restores_one_subtree(fixtures_dir, path):
    expected = _expected(fixtures_dir, "tf2_keras", None)
    sub, status = dr.load_object_tree(fixtures_dir / "tf2_keras", path=path, return_status=True)
    assert isinstance(sub, dr.Node) and set(dr.tracked_children(sub)) == {"_kernel", "bias"}
    key = "optimizer/_trainable_variables/3/.ATTRIBUTES/VARIABLE_VALUE"  # the same variable
    assert value_digest(sub.bias.numpy()) == expected[key]["sha256"]
    status.assert_existing_objects_matched()
    with pytest.raises(AssertionError):  # the rest of the checkpoint has no objects, as in TF
        status.assert_consumed()
    status.expect_partial()


def test_bad_path_and_tf1_checkpoint(fixtures_dir):
    with pytest.raises(KeyError, match="'nope' is not a child"):
        dr.load_object_tree(fixtures_dir / "tf2_keras", path=".model.nope")
    with pytest.raises(ValueError, match="cannot read object path"):
        dr.load_object_tree(fixtures_dir / "tf2_keras", path=".model[")
    with pytest.raises(dr.UnsupportedCheckpointError, match="name-based"):
        dr.load_object_tree(fixtures_dir / "tf1_sharded")


def test_values_it_cannot_hold_are_named(fixtures_dir):
    tree, status = dr.load_object_tree(fixtures_dir / "variant", return_status=True)
    assert isinstance(tree.it, dr.Node) and not dr.tracked_children(tree.it)
    status.assert_existing_objects_matched()
    with pytest.raises(AssertionError, match="ITERATOR"):
        status.assert_consumed()
    status.expect_partial()
    index = dr.open_checkpoint(fixtures_dir / "variant")
    text = format_object_tree(dr.read_object_graph(index), index.entries)
    assert "[not restored: ITERATOR: it/.ATTRIBUTES/ITERATOR_STATE variant[" in text


def test_remote_checkpoint(remote):
    url, options = remote("tf1_adam")
    tree = dr.load_object_tree(url, storage_options=options)
    np.testing.assert_array_equal(
        tree.net.w.numpy(), dr.load_variable(url, "net/w/.ATTRIBUTES/VARIABLE_VALUE", storage_options=options)
    )


# -- the kind rules, on graphs built by hand (no I/O) -------------------------------------------


def _var(key):
    return TrackableObject(attributes=(SerializedTensor("VARIABLE_VALUE", "", key),), has_checkpoint_values=True)


class _Entry:
    def __init__(self, dtype="float32", shape=(2,)):
        from distrestore.format import dtypes

        self.dtype, self.shape = dtypes.BY_NAME[dtype], shape


def test_plan_kinds():
    nodes = [
        TrackableObject(children=(ObjectReference(1, "lst"), ObjectReference(2, "d"), ObjectReference(5, "opt"))),
        TrackableObject(children=(ObjectReference(4, "1"), ObjectReference(3, "0"))),  # a list, out of order
        TrackableObject(children=(ObjectReference(3, "a.b"), ObjectReference(4, "ok"))),  # a dict
        _var("k3"),
        _var("k4"),
        TrackableObject(slot_variables=(SlotVariableReference(3, "m", 6),)),
        _var("k6"),
    ]
    specs = plan_object_tree(ObjectGraph(nodes), {"k3": _Entry(), "k4": _Entry("string", ()), "k6": _Entry()})
    assert [specs[i].kind for i in range(7)] == [NODE, LIST, "dict", VARIABLE, VARIABLE, OPTIMIZER, VARIABLE]
    assert specs[1].children == (("0", 3), ("1", 4))
    assert (specs[4].dtype, specs[4].shape) == ("string", ())
    # a variable whose value is not in the bundle stays a node, its attribute listed as not restored
    specs = plan_object_tree(ObjectGraph(nodes), {"k4": _Entry()})
    assert specs[3].kind == NODE and specs[3].unrestored == ("VARIABLE_VALUE: (missing from the bundle)",)


# -- checkpoints written by TF for these rules ------------------------------------------------------


@pytest.fixture(scope="module")
def tf_written(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("tf_object_tree")
    shared = tf.Variable([3.0, 4.0])
    module = tf.Module()
    module.first = shared
    module.second = shared
    root = tf.train.Checkpoint(
        d={"a.b": tf.Variable(1.5), "x/y": tf.Variable([1, 2], dtype=tf.int64), "plain": tf.Variable(True)},
        lst=[tf.Variable(tf.ones([2, 2], tf.bfloat16)), tf.Variable(b"text")],
        m=module,
    )
    prefix = root.save(str(d / "ckpt"))
    return tf, prefix, root


def test_tf_written_dicts_lists_and_shared(tf_written):
    tf, prefix, written = tf_written
    tree, status = dr.load_object_tree(prefix, return_status=True)
    status.assert_consumed()
    assert isinstance(tree.d, dr.NodeDict) and set(tree.d.keys()) == {"a.b", "x/y", "plain"}
    assert tree.d["a.b"].numpy() == np.float32(1.5) and tree.d["x/y"].numpy().tolist() == [1, 2]
    assert isinstance(tree.lst, dr.NodeList)
    assert tree.lst[0].numpy().tobytes() == written.lst[0].numpy().tobytes()  # bfloat16, bit for bit
    assert tree.lst[1].numpy() == b"text"
    assert tree.m.first is tree.m.second and tree.m.first.numpy().tolist() == [3.0, 4.0]
    # TF, restoring into its own objects, agrees that everything was consumed
    again = tf.train.Checkpoint(
        d={"a.b": tf.Variable(0.0), "x/y": tf.Variable([0, 0], dtype=tf.int64), "plain": tf.Variable(False)},
        lst=[tf.Variable(tf.zeros([2, 2], tf.bfloat16)), tf.Variable(b"")],
        m=tf.Module(),
    )
    again.m.first = again.m.second = tf.Variable([0.0, 0.0])
    again.restore(prefix).assert_consumed()


def test_status_assertions_as_tf_for_keras(fixtures_dir):
    """The full load and a model-only load of the Keras fixture pass and fail the same status
    assertions as TF restoring into a real Keras model and optimizer."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    source = str(fixtures_dir / "tf2_keras" / "ckpt-1")

    def outcomes(status):
        out = []
        for check in ("assert_consumed", "assert_existing_objects_matched", "assert_nontrivial_match"):
            try:
                getattr(status, check)()
                out.append(True)
            except AssertionError:
                out.append(False)
        status.expect_partial()
        return out

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    opt = keras.optimizers.Adam(learning_rate=0.01)
    opt.build(model.trainable_variables)
    tf_full = outcomes(tf.train.Checkpoint(model=model, optimizer=opt).restore(source))
    tf_model = outcomes(tf.train.Checkpoint(model=model).read(source))
    _, full = dr.load_object_tree(source, return_status=True)
    _, only_model = dr.load_object_tree(source, path=".model", return_status=True)
    assert outcomes(full) == tf_full == [True, True, True]
    assert outcomes(only_model) == tf_model == [False, True, True]


def test_the_object_graph_is_read_once(fixtures_dir, monkeypatch):
    import distrestore.restore as engine
    from distrestore.format.object_graph import OBJECT_GRAPH_PROTO_KEY

    real, asked = engine.fetch, []

    def counting(requests, **kwargs):
        asked.extend(r.name for r in requests)
        return real(requests, **kwargs)

    monkeypatch.setattr(engine, "fetch", counting)
    tree = dr.load_object_tree(str(fixtures_dir / "tf2_keras" / "ckpt-1"))
    assert asked.count(OBJECT_GRAPH_PROTO_KEY) == 1  # the tree is built from it, the read reuses it
    assert len(asked) > 1 and tree is not None
