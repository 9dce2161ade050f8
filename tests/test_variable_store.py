"""``VariableStore`` and ``init_from_checkpoint`` bookkeeping, without reading any tensor data:
variable reuse, TF's partition split, initializers, and the pending restores a call records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distrestore import errors
from distrestore.variable import Variable
from distrestore.variable_store import PartitionedVariable, VariablePart, VariableStore, init_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT_A = str(REPO / "tests" / "scenarios" / "init_from_checkpoint" / "ckpt_a")
FIXTURE = str(REPO / "tests" / "fixtures" / "tf" / "tf1_sharded" / "model.ckpt-7")


# -- the registry -----------------------------------------------------------------------------


def test_get_variable_creates_then_reuses():
    store = VariableStore()
    v = store.get_variable("new_scope_1/var1", shape=[20, 2], dtype="float32")
    assert isinstance(v, Variable) and v.name == "new_scope_1/var1"
    assert v.shape == (20, 2) and v.dtype == np.float32 and not v.numpy().any()
    assert store.get_variable("new_scope_1/var1", [20, 2]) is v
    assert "new_scope_1/var1" in store and store.get("new_scope_1/var1") is v
    with pytest.raises(ValueError, match="specified shape"):
        store.get_variable("new_scope_1/var1", [20, 3])
    with pytest.raises(errors.DTypeMismatchError, match="specified dtype"):
        store.get_variable("new_scope_1/var1", [20, 2], "float64")
    with pytest.raises(ValueError, match="unpartitioned version"):
        store.get_variable("new_scope_1/var1", [20, 2], partitions=[2, 1])


def test_partitioned_variable_reuse_and_conflicts():
    store = VariableStore()
    p = store.get_variable("s/p", [100, 100], partitions=[5, 1])
    assert store.get_variable("s/p", [100, 100], partitions=[5, 1]) is p
    with pytest.raises(ValueError, match="specified partitions"):
        store.get_variable("s/p", [100, 100], partitions=[4, 1])
    with pytest.raises(ValueError, match="specified shape"):
        store.get_variable("s/p", [100, 10], partitions=[5, 1])
    with pytest.raises(ValueError, match="partitioned version"):
        store.get_variable("s/p", [100, 100])
    store.get_variable("s/q/part_0", [4])
    with pytest.raises(ValueError, match="different partitioning"):
        store.get_variable("s/q", [8], partitions=[2])
    with pytest.raises(ValueError):
        store.get_variable("x:0", [1])


@pytest.mark.parametrize(
    "shape, partitions, message",
    [
        ([10, 3], [2, 2], "only slice a variable along one dimension"),
        ([10, 3], [2], "does not match the Variable's rank"),
        ([10, 3], [0, 1], "zero partitions"),
        ([], [], "rank at least 1"),
        ([3], [4], "into 4 parts"),
    ],
)
def test_bad_partitions(shape, partitions, message):
    with pytest.raises(ValueError, match=message):
        VariableStore().get_variable("p", shape, partitions=partitions)


def test_parts_follow_fixed_size_partitioner():
    store = VariableStore()
    p = store.get_variable("new_scope_2/var3", shape=[100, 100], dtype="float32", partitions=[5, 1])
    assert isinstance(p, PartitionedVariable) and len(p) == 5 and list(p) == p.parts
    assert [q.name for q in p.parts] == [f"new_scope_2/var3/part_{i}" for i in range(5)]
    assert p.parts[0].spec == "100 100 0,20:0,100"
    assert [q.offset for q in p.parts] == [(i * 20, 0) for i in range(5)]
    assert all(isinstance(q, VariablePart) and store.get(q.name) is q for q in p.parts)
    uneven = store.get_variable("u", [10, 3], partitions=[4, 1])
    assert [q.shape for q in uneven.parts] == [(3, 3), (3, 3), (2, 3), (2, 3)]  # earlier parts larger
    assert [q.spec for q in uneven.parts] == ["10 3 0,3:0,3", "10 3 3,3:0,3", "10 3 6,2:0,3", "10 3 8,2:0,3"]
    cols = store.get_variable("c", [4, 7], partitions=[1, 3])
    assert [q.region for q in cols.parts] == [
        (slice(0, 4), slice(0, 3)),
        (slice(0, 4), slice(3, 5)),
        (slice(0, 4), slice(5, 7)),
    ]
    one = store.get_variable("one", [4, 2], partitions=[1, 1])
    assert [q.name for q in one.parts] == ["one/part_0"] and one.parts[0].spec == "4 2 0,4:0,2"


def test_initializers():
    store = VariableStore()
    seen = []

    def init(shape, dtype):
        seen.append(shape)
        return np.full(shape, len(seen), dtype)

    p = store.get_variable("p", [10, 2], partitions=[3, 1], initializer=init)
    assert seen == [(4, 2), (3, 2), (3, 2)]  # called per part with the part's shape, like TF
    assert [q.numpy()[0, 0] for q in p.parts] == [1, 2, 3]
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    q = store.get_variable("q", [10, 2], partitions=[3, 1], initializer=full)  # split
    assert np.array_equal(q.numpy(), full) and np.array_equal(q.parts[1].numpy(), full[4:7])
    with pytest.raises(ValueError):
        store.get_variable("bad", [10, 2], partitions=[3, 1], initializer=np.zeros((3, 2)))
    assert (store.get_variable("s", [3], partitions=[3], initializer=2.5).numpy() == 2.5).all()
    i = store.get_variable("i", [3], "float32", initializer=np.arange(3))  # dtype wins over the array's
    assert i.dtype == np.float32
    assert store.get_variable("t", [2], "string").numpy().tolist() == [b"", b""]
    assert store.get_variable("h", [2], "bfloat16", initializer=1.5).numpy().tolist() == [1.5, 1.5]


def test_partitioned_assign_and_numpy():
    p = VariableStore().get_variable("p", [5, 2], partitions=[2, 1])
    value = np.arange(10, dtype=np.float32).reshape(5, 2)
    p.assign(value)
    assert np.array_equal(p.numpy(), value) and np.array_equal(p.parts[1].numpy(), value[3:])
    with pytest.raises(errors.ShapeMismatchError):
        p.assign(np.zeros((4, 2)))


# -- what a call records ----------------------------------------------------------------------


def _pending(store):
    return {(r.variable.name, r.tensor, r.box) for r in store.pending_restores()}


def test_call_records_regions_and_loads_nothing():
    store = VariableStore()
    p = store.get_variable("new/p", [100, 8], partitions=[4, 1], initializer=1.0)
    w = store.get_variable("new/w", [3, 4], initializer=2.0)
    init_from_checkpoint(FIXTURE, {"big/part5": "new/p", "scope1/w": w}, store=store)
    assert _pending(store) == {(f"new/p/part_{i}", "big/part5", ((25 * i, 25 * i + 25), (0, 8))) for i in range(4)} | {
        ("new/w", "scope1/w", None)
    }
    assert (p.numpy() == 1.0).all() and (w.numpy() == 2.0).all()


def test_scope_mapping_maps_parts_to_the_full_tensor():
    store = VariableStore()
    store.get_variable("new/part5", [100, 8], partitions=[2, 1])
    init_from_checkpoint(FIXTURE, {"big/": "new/"}, store=store)
    assert _pending(store) == {
        ("new/part5/part_0", "big/part5", ((0, 50), (0, 8))),
        ("new/part5/part_1", "big/part5", ((50, 100), (0, 8))),
    }


def test_later_mapping_replaces_earlier():
    store = VariableStore()
    v = store.get_variable("x/v", [4])
    init_from_checkpoint(CKPT_A, [("dup/b", v), ("dup/a", v)], store=store)
    assert _pending(store) == {("x/v", "dup/b", None)}  # sorted by checkpoint name: dup/b last
    init_from_checkpoint(CKPT_A, {"dup/a": "x/v"}, store=store)
    assert _pending(store) == {("x/v", "dup/a", None)}


def test_variables_registered_later_are_not_covered():
    store = VariableStore()
    store.get_variable("new_scope_1/var1", [20, 2])
    init_from_checkpoint(CKPT_A, {"old_scope_1/": "new_scope_1/"}, store=store)
    store.get_variable("new_scope_1/var2", [50, 4])
    assert _pending(store) == {("new_scope_1/var1", "old_scope_1/var1", None)}
    init_from_checkpoint(CKPT_A, {"old_scope_1/": "new_scope_1/"}, store=store)  # cover it: call again
    assert len(store.pending_restores()) == 2


def test_unregistered_variable_object_is_a_target():
    store = VariableStore()
    v = Variable(shape=[4], name="free")
    init_from_checkpoint(CKPT_A, {"dup/a": v}, store=store)
    assert _pending(store) == {("free", "dup/a", None)}


def test_failed_call_records_nothing():
    store = VariableStore()
    store.get_variable("a", [4])
    store.get_variable("b", [4])
    with pytest.raises(errors.AssignmentMapError):
        init_from_checkpoint(CKPT_A, {"dup/a": "a", "zz/missing": "b"}, store=store)
    assert store.pending_restores() == []


@pytest.mark.parametrize(
    "mapping, error, match",
    [
        ({"dup/a": 3}, errors.AssignmentMapError, "must be a variable name"),
        ([("dup/a",)], errors.AssignmentMapError, "pairs"),
        ({"dup/a": [Variable(shape=[4])]}, errors.AssignmentMapError, "not a part of a partitioned variable"),
        ({"old_scope_2/table": Variable(shape=[3, 4])}, errors.DTypeMismatchError, "dtype float64"),
    ],
)
def test_bad_targets(mapping, error, match):
    with pytest.raises(error, match=match):
        init_from_checkpoint(CKPT_A, mapping, store=VariableStore())


def test_store_is_required():
    with pytest.raises(TypeError):
        init_from_checkpoint(CKPT_A, {}, store=None)


def test_initialize_passes_timeout_and_deadline_only_when_given():
    from distrestore.restore import fetch

    seen = []

    def recording(requests, **kwargs):
        seen.append(dict(kwargs))
        kwargs.pop("timeout", None), kwargs.pop("deadline", None)  # what the engine takes is F's
        return fetch(requests, **kwargs)

    for limits in ({}, {"timeout": 2.0, "deadline": 20.0}, {"deadline": 5.0}):
        store = VariableStore()
        store.get_variable("v", [20, 2])
        init_from_checkpoint(CKPT_A, {"old_scope_1/var1": "v"}, store=store)
        store.initialize(fetch=recording, **limits)
        assert {k: seen[-1][k] for k in ("timeout", "deadline") if k in seen[-1]} == limits
        assert store.pending_restores() == []
