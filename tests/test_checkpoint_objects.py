"""Object-based restore (``distrestore.objects``) against what TensorFlow 2.21 does.

The scenarios in ``scenarios/object_restore/expected.json`` were run through real TF by
``scenarios/gen_object_restore.py``; here distrestore runs the same steps and must end with the
same values (bit-exact digests), the same assertions raising (by message category) and the same
unused checkpoint values reported. Where TF is installed, the recording is checked against live
TF too. The rest are distrestore-specific: one fetch per restore, atomicity, the Node API.
"""

from __future__ import annotations

import gc
import json
import keyword
import os
import sys
import warnings

import numpy as np
import pytest

import distrestore.objects as objects
from distrestore.errors import (
    CheckpointNotFoundError,
    DTypeMismatchError,
    MismatchError,
    RestoreAssertionError,
    ShapeMismatchError,
    UnsupportedCheckpointError,
)
from distrestore.objects import (
    Checkpoint,
    Node,
    NodeDict,
    NodeList,
    Optimizer,
    UnusedCheckpointValuesWarning,
    read_object_graph,
    tracked_children,
)
from distrestore.variable import Variable

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TESTS, "scenarios"))
import gen_object_restore as gen  # noqa: E402  (no TF at import time)

with open(os.path.join(TESTS, "scenarios", "object_restore", "expected.json")) as _f:
    RECORDED = json.load(_f)
SCENARIOS = {s["name"]: s for s in RECORDED["scenarios"]}
FIXTURES = os.path.join(TESTS, "fixtures", "tf")
TWO = os.path.join(TESTS, gen.TWO)
ONE = os.path.join(TESTS, gen.ONE)
PARTIAL = os.path.join(TESTS, gen.PARTIAL)
TF1_ADAM = os.path.join(TESTS, gen.TF1_ADAM)


# -- the distrestore interpreter of the scenario steps ---------------------------------------


class DRWorld:
    def __init__(self):
        self.top = None
        self.statuses = {}
        self.built = {}

    @staticmethod
    def children(obj):
        return list(tracked_children(obj).items())

    @staticmethod
    def is_variable(obj):
        return isinstance(obj, Variable)

    @staticmethod
    def value(var):
        return var.numpy()

    def slots(self, obj):
        if not isinstance(obj, Optimizer):
            return []
        out = []
        for var in self._all_variables():
            for name in obj.get_slot_names():
                s = obj.get_slot(var, name)
                if s is not None:
                    out.append((var, name, s))
        return out

    def _all_variables(self):
        seen, out, queue = set(), [], [self.top]
        while queue:
            o = queue.pop(0)
            if id(o) in seen:
                continue
            seen.add(id(o))
            if isinstance(o, Variable):
                out.append(o)
            queue.extend(tracked_children(o).values())
        return out

    def values(self) -> dict:
        return gen.walk_values(self.top, self.children, self.is_variable, self.value, self.slots)

    def lookup(self, path):
        obj = self.top
        for name in path:
            obj = tracked_children(obj)[name]
        return obj

    @staticmethod
    def set_child(parent, name, child):
        if isinstance(parent, NodeDict):
            parent[name] = child
        elif name.isidentifier() and not keyword.iskeyword(name):
            setattr(parent, name, child)
        else:
            parent[name] = child

    def build(self, spec, path=()):
        kind = next(k for k in spec if k != "root")
        if kind == "ref":
            return self.built[tuple(spec["ref"])]
        if kind == "var":
            v = spec["var"]
            obj = Variable(gen.initial_value(v), dtype=v["dtype"])
        elif kind in ("node", "optimizer"):
            obj = Node() if kind == "node" else Optimizer()
            self.built[tuple(path)] = obj
            for name, child in spec[kind].items():
                self.set_child(obj, name, self.build(child, path + (name,)))
            return obj
        elif kind == "list":
            obj = NodeList([None if c is None else self.build(c, path + (str(i),)) for i, c in enumerate(spec["list"])])
        elif kind == "dict":
            obj = NodeDict({k: self.build(c, path + (k,)) for k, c in spec["dict"].items()})
        elif kind == "checkpoint":
            kwargs = {k: self.build(c, path + (k,)) for k, c in spec["checkpoint"].items()}
            if "root" in spec:
                kwargs["root"] = self.build(spec["root"], path + ("root",))
            obj = Checkpoint(**kwargs)
        else:
            raise ValueError(kind)
        self.built[tuple(path)] = obj
        return obj


def _run_step(world: DRWorld, step: dict, caught: list) -> dict:
    op = step["op"]
    result: dict = {}
    if op == "build":
        world.top = world.build(step["tree"])
    elif op in ("restore", "read"):
        path = None if step["path"] is None else os.path.join(TESTS, step["path"])
        if step.get("expect_error"):
            before = world.values()
            with pytest.raises(MismatchError) as info:  # shape or dtype, as the scenario says
                getattr(world.top, op)(path)
            result["error"] = info.value
            result["values_changed"] = sorted(k for k, v in world.values().items() if before.get(k, v) != v)
            result["values_added"] = sorted(set(world.values()) - set(before))
        else:
            world.statuses[step["as"]] = getattr(world.top, op)(path)
    elif op in ("attach", "append"):
        parent = world.lookup(step["parent"])
        value = world.build(step["tree"], tuple(step["parent"]) + (step.get("name", "?"),))
        if op == "append":
            parent.append(value)
        else:
            world.set_child(parent, step["name"], value)
    elif op == "save_counter":
        world.top.save_counter  # noqa: B018
    elif op == "expect_partial":
        world.statuses[step["status"]].expect_partial()
    elif op == "check":
        status = world.statuses[step["status"]]
        assertions = {}
        for name in gen.ASSERTIONS:
            try:
                out = getattr(status, gen.ASSERTION_METHODS[name])()
                assert out is status
                assertions[name] = None
            except AssertionError as e:
                assert isinstance(e, RestoreAssertionError), e
                assertions[name] = gen.categorize(str(e))
        result["assertions"] = assertions
        result["values"] = world.values()
    elif op == "end":
        caught.clear()
        world.statuses.clear()
        world.top = None
        world.built.clear()
        gc.collect()
        lines = []
        for w in caught:
            if issubclass(w.category, UnusedCheckpointValuesWarning):
                lines.extend(str(w.message).splitlines())
        result["unused_values"] = gen.parse_unused(lines)
    return result


def run_dr(scenario) -> list:
    world = DRWorld()
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in scenario["steps"]:
            results.append((step, _run_step(world, step, caught)))
        del world  # a scenario without "end" may warn here; keep it out of the test report
    return results


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_tf(name):
    scenario = SCENARIOS[name]
    for i, (step, got) in enumerate(run_dr(scenario)):
        where = f"{name} step {i} ({step['op']} {step.get('status', step.get('path', ''))})"
        if step["op"] == "check":
            assert got["assertions"] == step["assertions"], where
            assert got["values"] == step["values"], where
        elif step["op"] == "end":
            assert got["unused_values"] == step["unused_values"], where
        elif "tf_error" in step:
            # TF raises here too (ValueError for a shape, InvalidArgumentError for a dtype) but
            # may have assigned some variables already; distrestore assigns nothing.
            assert got["values_changed"] == [] and got["values_added"] == [], where
            assert "(root).model.dense1" in str(got["error"]) or "(root).step" in str(got["error"])


def test_recording_covers_the_brief():
    names = set(SCENARIOS)
    for required in (
        "keras_whole_model",
        "keras_model_without_optimizer",
        "fake_structure_bias",
        "deferred_two_levels",
        "new_variable_absent_from_checkpoint",
        "saved_model_read",
        "tf1_adam_slots",
        "read_of_write_checkpoint",
        "restore_of_write_checkpoint",
    ):
        assert required in names
    assert RECORDED["tf_version"].startswith("2.21")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_recording_matches_live_tf(name):
    tf = pytest.importorskip("tensorflow")
    live = gen.run_tf(tf, gen.SCENARIOS[[s["name"] for s in gen.SCENARIOS].index(name)])
    for rec, now in zip(SCENARIOS[name]["steps"], live):
        for key in ("assertions", "values", "unused_values"):
            assert rec.get(key) == now.get(key), (name, rec["op"], key)
        if "tf_error" in rec:
            assert rec["tf_error"]["type"] == now["tf_error"]["type"]


# -- one plan per restore -----------------------------------------------------------------------


class CountingFetch:
    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, requests, **kwargs):
        from distrestore.restore import fetch

        self.calls.append([r.name for r in requests])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise OSError("injected read failure")
        return fetch(requests, **kwargs)


def dense(n_in, n_out):
    return Node(_kernel=Variable(shape=[n_in, n_out]), bias=Variable(shape=[n_out]))


def test_restore_reads_all_matched_variables_in_one_fetch():
    f = CountingFetch()
    root = Checkpoint(model=Node(dense1=dense(1, 4), dense2=dense(4, 5)), step=Variable(shape=[], dtype="int64"))
    root.restore(TWO, fetch=f).expect_partial()
    assert f.calls[0] == ["_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(f.calls) == 2
    assert sorted(f.calls[1]) == sorted(
        [
            "model/dense1/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense1/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense2/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense2/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "step/.ATTRIBUTES/VARIABLE_VALUE",
            "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        ]
    )
    assert int(root.save_counter.numpy()) == 2 and int(root.step.numpy()) == 8


def test_attaching_a_subtree_reads_it_in_one_fetch():
    f = CountingFetch()
    root = Checkpoint(model=Node())
    status = root.restore(TWO, fetch=f)
    n = len(f.calls)
    root.model.layers = [Variable(shape=[2]), Node(w=Variable(shape=[2, 2]))]
    assert len(f.calls) == n + 1
    assert sorted(f.calls[-1]) == [
        "model/layers/0/.ATTRIBUTES/VARIABLE_VALUE",
        "model/layers/1/w/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    status.expect_partial()


def test_values_match_the_checkpoint_bit_exactly():
    expected = dr_tensors(TWO)
    root = Checkpoint(model=Node(dense1=dense(1, 4), table={"a/b.c": Variable(shape=[3])}))
    root.read(TWO).expect_partial()
    np.testing.assert_array_equal(
        root.model.dense1._kernel.numpy(), expected["model/dense1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    # dict key escaped in the key: a/b.c -> a.Sb..c
    np.testing.assert_array_equal(
        root.model.table["a/b.c"].numpy(), expected["model/table/a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"]
    )


def dr_tensors(path):
    from distrestore.restore import restore_tensors

    return restore_tensors(path)


# -- atomicity and errors ------------------------------------------------------------------------


def test_shape_mismatch_names_the_object_and_assigns_nothing():
    root = Checkpoint(
        model=Node(dense1=Node(_kernel=Variable(shape=[1, 4]), bias=Variable(shape=[7]))),
        step=Variable(shape=[], dtype="int64"),
    )
    before = {k: v.numpy().copy() for k, v in [("k", root.model.dense1._kernel), ("s", root.step)]}
    with pytest.raises(ShapeMismatchError) as info:
        root.restore(TWO)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "(root).model.dense1.bias" in msg and "[4]" in msg and "[7]" in msg
    np.testing.assert_array_equal(root.model.dense1._kernel.numpy(), before["k"])
    np.testing.assert_array_equal(root.step.numpy(), before["s"])
    assert tracked_children(root.model)["dense1"]._dr_deferred == {}
    # nothing was recorded: with the right variable, the same tree restores cleanly
    root.model.dense1.bias = Variable(shape=[4])
    status = root.restore(TWO)
    status.assert_existing_objects_matched().expect_partial()
    assert root.model.dense1._kernel.numpy().tolist() != before["k"].tolist()


def test_dtype_mismatch_is_a_value_error():
    root = Checkpoint(step=Variable(shape=[], dtype="float32"))
    with pytest.raises(DTypeMismatchError, match=r"\(root\)\.step.*int64") as info:
        root.read(TWO)
    assert isinstance(info.value, MismatchError) and isinstance(info.value, ValueError)
    assert not isinstance(info.value, ShapeMismatchError)


def test_failed_attach_leaves_the_child_unattached_and_the_restore_pending():
    root = Checkpoint(model=Node())
    status = root.restore(TWO)
    with pytest.raises(ShapeMismatchError, match=r"model\.dense2\._kernel"):
        root.model.dense2 = Node(_kernel=Variable(shape=[5, 4]), bias=Variable(shape=[5]))
    assert "dense2" not in tracked_children(root.model)
    assert not hasattr(root.model, "dense2")
    good = dense(4, 5)
    root.model.dense2 = good
    assert good.bias.numpy().tolist() == dr_tensors(TWO)["model/dense2/bias/.ATTRIBUTES/VARIABLE_VALUE"].tolist()
    status.expect_partial()


def test_read_failure_assigns_nothing_and_binds_nothing():
    f = CountingFetch(fail_on_call=2)
    root = Checkpoint(model=Node(dense1=dense(1, 4)))
    with pytest.raises(OSError, match="injected"):
        root.read(TWO, fetch=f)
    assert not root.model.dense1.bias.numpy().any()
    assert root.model._dr_deferred == {} and root._dr_deferred == {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del root
        gc.collect()
    assert not caught  # the failed restore left nothing behind to warn about


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Checkpoint(v=Variable(shape=[1])).restore(str(tmp_path / "nope"))
    with pytest.raises(CheckpointNotFoundError):
        Checkpoint(v=Variable(shape=[1])).read(str(tmp_path / "nope"))


def test_name_based_checkpoint_is_refused():
    with pytest.raises(UnsupportedCheckpointError, match="init_from_checkpoint"):
        Checkpoint(v=Variable(shape=[1])).read(os.path.join(FIXTURES, "tf1_sharded", "model.ckpt-7"))


def test_directory_with_checkpoint_file_resolves_to_latest():
    root = Checkpoint(model=Node(dense1=dense(1, 4)))
    root.read(os.path.dirname(TWO)).expect_partial()
    np.testing.assert_array_equal(
        root.model.dense1.bias.numpy(), dr_tensors(TWO)["model/dense1/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    )


# -- warnings ----------------------------------------------------------------------------------


def test_unused_values_warn_when_the_restore_is_forgotten():
    root = Checkpoint(model=Node(dense1=dense(1, 4)))
    with pytest.warns(UnusedCheckpointValuesWarning, match=r"\(root\)\.model\.dense2\.bias"):
        root.read(TWO)  # the status is dropped at once; the deferred restores keep the restore
        root.model._dr_deferred.clear()  # alive until they go
        root._dr_deferred.clear()
        gc.collect()


def test_expect_partial_silences_the_warning():
    root = Checkpoint(model=Node(dense1=dense(1, 4)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root.read(TWO).expect_partial()
        del root
        gc.collect()
    assert not caught


def test_warning_waits_for_pending_deferred_restores():
    root = Checkpoint(model=Node())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root.read(PARTIAL)  # status dropped; model.dense1 and step still pending
        gc.collect()
        assert not [w for w in caught if issubclass(w.category, UnusedCheckpointValuesWarning)]
        root.model.dense1 = dense(1, 4)
        root.step = Variable(shape=[], dtype="int64")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, UnusedCheckpointValuesWarning)]


# -- the object tree API -------------------------------------------------------------------------


def test_node_tracks_attributes_items_lists_and_dicts():
    v = Variable(shape=[2])
    n = Node(a=v, items=[Variable(shape=[1]), 3, Node()], table={"a/b.c": Variable(shape=[1])})
    assert list(tracked_children(n)) == ["a", "items", "table"]
    assert isinstance(n.items, NodeList) and isinstance(n.table, NodeDict)
    assert list(tracked_children(n.items)) == ["0", "2"]  # the int is kept but not tracked
    assert n.items[1] == 3 and len(n.items) == 3
    assert list(tracked_children(n.table)) == ["a/b.c"]
    n["x.y"] = Variable(shape=[1])
    assert "x.y" in tracked_children(n) and n["x.y"].shape == (1,)
    n.plain = 5  # not trackable: an ordinary attribute
    assert n.plain == 5 and "plain" not in tracked_children(n)
    n.a = 7  # a tracked name given a plain value stops being tracked
    assert "a" not in tracked_children(n)
    del n["x.y"]
    assert "x.y" not in tracked_children(n)
    n.sub = Node()
    del n.sub
    assert "sub" not in tracked_children(n) and not hasattr(n, "sub")
    with pytest.raises(TypeError):
        n["bad"] = 5


def test_child_named_like_a_keyword_or_digit():
    n = Node(**{"1": Node(bias=Variable(shape=[8]))})
    assert tracked_children(n)["1"] is n["1"]


def test_checkpoint_rejects_non_trackables_and_conflicting_root_children():
    with pytest.raises(ValueError, match="trackable"):
        Checkpoint(x=5)
    node = Node(a=Node())
    with pytest.raises(ValueError, match="root.a already exists"):
        Checkpoint(root=node, a=Node())
    ck = Checkpoint(root=node, a=node.a)  # the same object is fine
    assert ck.root is node


def test_list_append_restores_the_new_index():
    root = Checkpoint(model=Node(layers=[Variable(shape=[2])]))
    status = root.read(TWO)
    root.model.layers.append(Node(w=Variable(shape=[2, 2])))
    np.testing.assert_array_equal(
        root.model.layers[1].w.numpy(), dr_tensors(TWO)["model/layers/1/w/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    status.expect_partial()


def test_optimizer_slots_created_on_restore_and_existing_slots_reused():
    w, b = Variable(shape=[3, 2], name="w"), Variable(shape=[2], name="b")
    opt = Optimizer()
    pre = opt.add_slot(w, "m")
    assert not pre.numpy().any() and opt.get_slot(w, "m") is pre
    root = Checkpoint(net=Node(w=w, b=b), opt=opt)
    root.restore(TF1_ADAM).expect_partial()
    t = dr_tensors(TF1_ADAM)
    assert opt.get_slot(w, "m") is pre
    np.testing.assert_array_equal(pre.numpy(), t["net/w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"])
    np.testing.assert_array_equal(
        opt.get_slot(b, "v").numpy(), t["net/b/.OPTIMIZER_SLOT/opt/v/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    assert opt.get_slot_names() == ["m", "v"]


def test_keras_optimizer_state_restores_as_plain_children():
    variables = [Variable(shape=[], dtype="int64"), Variable(shape=[])] + [
        Variable(shape=s) for s in ([4, 8], [4, 8], [8], [8], [8, 3], [8, 3], [3], [3])
    ]
    root = Checkpoint(optimizer=Node(_variables=variables))
    status = root.read(os.path.join(FIXTURES, "tf2_keras", "ckpt-1"))
    status.assert_existing_objects_matched().expect_partial()
    t = dr_tensors(os.path.join(FIXTURES, "tf2_keras", "ckpt-1"))
    np.testing.assert_array_equal(variables[3].numpy(), t["optimizer/_variables/3/.ATTRIBUTES/VARIABLE_VALUE"])
    assert int(variables[0].numpy()) == int(t["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"])


def test_status_exposes_the_object_graph_and_read_object_graph():
    root = Checkpoint(model=Node())
    status = root.read(TWO).expect_partial()
    assert status.object_graph.checkpoint_key("model/table/a.Sb..c") == "model/table/a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"
    graph = read_object_graph(os.path.join(FIXTURES, "tf2_keras", "ckpt-1"))
    assert (
        graph.checkpoint_key("model/_functional/_operations/1/_kernel")
        == "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    )


def test_restore_uids_order_pending_restores_newest_first():
    root = Checkpoint(model=Node())
    s_two = root.restore(TWO)
    s_one = root.restore(ONE)
    root.model.dense1 = dense(1, 4)
    np.testing.assert_array_equal(
        root.model.dense1.bias.numpy(), dr_tensors(ONE)["model/dense1/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    s_two.expect_partial()
    s_one.expect_partial()


def test_module_exports():
    assert set(objects.__all__) >= {
        "Checkpoint",
        "Node",
        "NodeList",
        "NodeDict",
        "Optimizer",
        "CheckpointLoadStatus",
        "UnusedCheckpointValuesWarning",
    }


def test_pending_restores_of_two_checkpoints_share_one_fetch():
    f = CountingFetch()
    root = Checkpoint()
    s1 = root.restore(ONE, fetch=f)  # has dense2
    s2 = root.read(PARTIAL, fetch=f)  # newer, has dense1 only
    n = len(f.calls)
    root.model = Node(dense1=dense(1, 4), dense2=dense(4, 5))
    assert len(f.calls) == n + 1
    assert sorted(f.calls[-1]) == sorted(
        [
            "model/dense1/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense1/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense2/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/dense2/bias/.ATTRIBUTES/VARIABLE_VALUE",
        ]
    )
    np.testing.assert_array_equal(
        root.model.dense1.bias.numpy(), dr_tensors(PARTIAL)["model/dense1/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    np.testing.assert_array_equal(
        root.model.dense2.bias.numpy(), dr_tensors(ONE)["model/dense2/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    s1.expect_partial()
    s2.expect_partial()


class Dense(Node):
    """A user-defined node that sets its variables before (or without) Node.__init__."""

    def __init__(self, n_in, n_out):
        self._kernel = Variable(shape=[n_in, n_out])
        self.bias = Variable(shape=[n_out])


def test_user_subclasses_of_node():
    root = Checkpoint(model=Node(dense1=Dense(1, 4)))
    root.read(TWO).expect_partial().assert_existing_objects_matched()
    np.testing.assert_array_equal(
        root.model.dense1._kernel.numpy(), dr_tensors(TWO)["model/dense1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    )


def test_restore_none_creates_the_save_counter_and_fails_every_assertion():
    root = Checkpoint(v=Variable(shape=[1]))
    status = root.restore(None)
    assert "save_counter" in tracked_children(root)
    for check in (status.assert_consumed, status.assert_existing_objects_matched, status.assert_nontrivial_match):
        with pytest.raises(RestoreAssertionError, match="No checkpoint specified"):
            check()


class KwargsFetch:
    """Records the keywords of every fetch call."""

    def __init__(self):
        self.kwargs: list[dict] = []

    def __call__(self, requests, **kwargs):
        from distrestore.restore import fetch

        self.kwargs.append(dict(kwargs))
        kwargs.pop("timeout", None), kwargs.pop("deadline", None)  # what the engine takes is F's
        return fetch(requests, **kwargs)


def test_timeout_and_deadline_reach_fetch_and_deferred_restores():
    f = KwargsFetch()
    root = Checkpoint()
    status = root.restore(TWO, fetch=f, timeout=3.0, deadline=30.0)
    # one deadline for the call: the graph and the values get what opening (and the graph) left
    assert f.kwargs and all(k["timeout"] == 3.0 and 20.0 < k["deadline"] <= 30.0 for k in f.kwargs)
    assert [k["deadline"] for k in f.kwargs] == sorted((k["deadline"] for k in f.kwargs), reverse=True)
    n = len(f.kwargs)
    root.model = Node(dense1=dense(1, 4))  # a deferred restore: the same keywords, a whole deadline
    assert len(f.kwargs) > n and f.kwargs[-1]["timeout"] == 3.0 and f.kwargs[-1]["deadline"] == 30.0
    status.expect_partial()


def test_no_timeout_keywords_unless_given():
    f = KwargsFetch()
    Checkpoint().read(TWO, fetch=f).expect_partial()
    assert f.kwargs and not any("timeout" in k or "deadline" in k for k in f.kwargs)
