"""``init_from_checkpoint`` against TensorFlow: replay of the scenarios TF 2.21 ran
(``tests/scenarios/gen_init_from_checkpoint.py`` -> ``expected.json``), a live comparison where TF
is installed, and the engine contract: one plan, no byte read twice, nothing assigned on failure.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from distrestore import errors
from distrestore.index import open_checkpoint
from distrestore.variable_store import PartitionedVariable, VariableStore, init_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCENARIO_DIR = REPO / "tests" / "scenarios" / "init_from_checkpoint"
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from digest import value_digest  # noqa: E402

from distrestore.storage.wrappers import CountingStorage  # noqa: E402

EXPECTED = json.loads((SCENARIO_DIR / "expected.json").read_text())
SCENARIOS = {s["name"]: s for s in EXPECTED["scenarios"]}
PATHS = {k: str(REPO / v) for k, v in EXPECTED["checkpoints"].items()}
FIXTURE = REPO / "tests" / "fixtures" / "tf" / "tf1_sharded"


# -- running a scenario through distrestore ---------------------------------------------------


def _target(t, objs):
    if isinstance(t, str):
        return t
    if "var" in t:
        return objs[t["var"]]
    if "partitioned" in t:
        return objs[t["partitioned"]]
    if "parts" in t:
        parts = list(objs[t["parts"]].parts)
        return [parts[i] for i in t["indices"]] if "indices" in t else parts
    if "parts_of" in t:
        return [objs[n].parts[0] for n in t["parts_of"]]
    raise ValueError(t)


def _record(obj):
    rec = {"shape": list(obj.shape), "dtype": obj.tf_dtype.name, "sha256": value_digest(obj.numpy())}
    if isinstance(obj, PartitionedVariable):
        rec["parts"] = [
            {
                "shape": list(p.shape),
                "dtype": p.tf_dtype.name,
                "sha256": value_digest(p.numpy()),
                "spec": p.spec,
                "name": p.name,
            }
            for p in obj.parts
        ]
    return rec


def run_ours(scenario, paths=PATHS, *, calls=True, initialize=True):
    """Replay the steps; the first call that raises stops further calls (as in the generator).
    Returns (values, error)."""
    store = VariableStore()
    objs, error = {}, None
    for step in scenario["steps"]:
        if "var" in step:
            v = step["var"]
            objs[v["name"]] = store.get_variable(
                v["name"], v["shape"], v["dtype"], partitions=v["partitions"], initializer=v["init"]
            )
        elif calls and error is None:
            call = step["call"]
            pairs = [(ck, _target(t, objs)) for ck, t in call["map"]]
            mapping = dict(pairs) if call["as"] == "dict" else pairs
            try:
                init_from_checkpoint(paths[call["ckpt"]], mapping, store=store)
            except errors.DistRestoreError as e:
                error = e
    if initialize:
        store.initialize()
    return {name: _record(obj) for name, obj in objs.items()}, error


def _assert_values(got, want, where):
    assert set(got) == set(want), where
    for name in want:
        assert got[name] == want[name], f"{where}: variable {name}"


# -- replay -----------------------------------------------------------------------------------


def test_scenarios_cover_the_issue():
    names = set(SCENARIOS)
    for required in [
        "scope_to_scope",
        "name_to_name",
        "name_to_variable_object",
        "partitioned_by_name",
        "partitioned_by_parts_list",
        "partitioned_object",
        "root_to_scope",
        "scope_to_root",
        "pairs_one_tensor_many_vars",
        "repartition_5_to_2",
        "repartition_5_to_4",
        "repartition_uneven_rows",
        "two_checkpoints",
        "err_tensor_missing",
        "err_scope_only_name_to_non_scope",
        "err_shape_mismatch",
        "err_dtype_mismatch",
        "err_checkpoint_name_colon0",
        "err_variable_name_colon0",
        "later_variables_not_covered",
    ]:
        assert required in names
    assert EXPECTED["tf_version"].startswith("2.21")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_initial_values_match_tf(name):
    """get_variable's initializers and TF's partition split (part names, slice specs) match TF."""
    values, error = run_ours(SCENARIOS[name], calls=False, initialize=False)
    assert error is None
    _assert_values(values, SCENARIOS[name]["initial"], name)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replay(name):
    scenario = SCENARIOS[name]
    ours = scenario["ours"]
    values, error = run_ours(scenario)
    if "error" in ours:
        assert error is not None, f"{name}: expected {ours['error']['class']}"
        assert type(error).__name__ == ours["error"]["class"], repr(error)
        assert isinstance(error, ValueError)  # where TF raises ValueError, and for our eager checks
        assert ours["error"]["fragment"] in str(error)
        if scenario["tf"]["error"]["phase"] == "call" and "fragment" in scenario.get("error", {}):
            assert scenario["error"]["fragment"] in scenario["tf"]["error"]["message"]
    else:
        assert error is None, f"{name}: {error}"
    _assert_values(values, ours["values"], name)


def test_atomic_call_differs_from_tf_on_purpose():
    """TF applies the pairs sorted before the failing one; distrestore records nothing."""
    s = SCENARIOS["err_atomic_call"]
    assert s["tf"]["values_after_error"]["new_scope_1/var1"] != s["initial"]["new_scope_1/var1"]
    values, error = run_ours(s)
    assert isinstance(error, errors.AssignmentMapError)
    assert values["new_scope_1/var1"] == s["initial"]["new_scope_1/var1"]


# -- live TensorFlow --------------------------------------------------------------------------


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_init_from_checkpoint", REPO / "tests" / "scenarios" / "gen_init_from_checkpoint.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "name", ["repartition_5_to_4", "two_checkpoints", "fixture_scope_dtypes", "err_tensor_missing_in_scope"]
)
def test_live_against_tensorflow(name):
    pytest.importorskip("tensorflow")
    gen = _generator()
    scenario = SCENARIOS[name]
    tf_result = gen.run_tf(scenario, PATHS)
    values, error = run_ours(scenario)
    if "error" in tf_result:
        assert error is not None and scenario["error"]["fragment"] in str(error)
        assert scenario["error"]["fragment"] in tf_result["error"]["message"]
    else:
        assert error is None
        _assert_values(values, tf_result["values"], name)


# -- one plan, each byte once -----------------------------------------------------------------


@pytest.fixture
def count_fetch(monkeypatch):
    import distrestore.restore as restore

    calls = []
    real = restore.fetch

    def counting(requests, **kw):
        calls.append(list(requests))
        return real(requests, **kw)

    monkeypatch.setattr(restore, "fetch", counting)
    return calls


def _nbytes(shape, itemsize):
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def _no_byte_twice(reads):
    by_file: dict[str, list[tuple[int, int]]] = {}
    for url, a, b in reads:
        by_file.setdefault(url, []).append((a, b))
    for url, ranges in by_file.items():
        ranges.sort()
        for (_, b0), (a1, _) in zip(ranges, ranges[1:]):
            assert b0 <= a1, f"{url}: bytes [{a1}, {b0}) read twice"
    return by_file


def test_initialize_is_one_plan_reading_each_byte_once(count_fetch):
    """Every tensor of two checkpoints, re-partitioned, from five calls: one fetch, and the bytes
    read are exactly the data files (every byte is needed, none is read twice)."""
    storage = CountingStorage()
    store = VariableStore()
    gv = store.get_variable
    big = gv("big", [100, 8], partitions=[4, 1])  # 5 stored slices -> 4 parts
    gv("rows", [10, 3], partitions=[4, 1])  # rows 4/3/3 -> 3/3/2/2
    gv("cols", [4, 7], partitions=[1, 3])  # columns 4/3 -> 3/2/2
    gv("i64", [7, 2], "int64", partitions=[2, 1])
    for name, shape, dtype in [
        ("scope1/w", [3, 4], "float32"),
        ("scope1/b", [4], "float64"),
        ("scope1/count", [], "int32"),
        ("scope2/nested/v", [2, 2, 2], "int64"),
        ("scope2/nested/flag", [3], "bool"),
        ("scope2/nested/half", [2], "float16"),
        ("scope2/nested/bf16", [2], "bfloat16"),
        ("scope2/nested/label", [3], "string"),
    ]:
        gv("enc/" + name, shape, dtype)
    step = gv("step", [], "int64")
    w = store.get("enc/scope1/w")
    twin = gv("twin/w", [3, 4])  # the same tensor as enc/scope1/w
    v3 = gv("v3", [100, 100], partitions=[2, 1])  # 5 stored slices -> 2 parts
    for name, shape, dtype in [
        ("old_scope_1/var1", [20, 2], "float32"),
        ("old_scope_1/var2", [50, 4], "float32"),
        ("old_scope_2/ids", [6], "int64"),
        ("old_scope_2/table", [3, 4], "float64"),
        ("dup/a", [4], "float32"),
        ("dup/b", [4], "float32"),
    ]:
        gv("dec/" + name, shape, dtype)
    f, a = PATHS["f"], PATHS["a"]
    init_from_checkpoint(
        f,
        {"big/part5": "big", "part_rows": "rows", "part_cols": "cols", "part_int64": "i64", "global_step": step},
        store=store,
        storage=storage,
    )
    init_from_checkpoint(f, {"scope1/": "enc/scope1/", "scope2/": "enc/scope2/"}, store=store, storage=storage)
    init_from_checkpoint(f, [("scope1/w", twin)], store=store, storage=storage)
    init_from_checkpoint(a, {"old_scope_2/var3": v3}, store=store, storage=storage)
    init_from_checkpoint(a, {"/": "dec/"}, store=store, storage=storage)
    assert storage.requests and all(url.endswith((".index", "checkpoint")) for url, _, _ in storage.requests)
    storage.reset()
    assert not big.numpy().any() and not w.numpy().any()  # nothing is loaded at the call

    store.initialize()

    assert len(count_fetch) == 1  # one plan: 5 calls, 2 checkpoints
    assert len(count_fetch[0]) == len(store.variables) - 1  # twin shares enc/scope1/w's request
    by_file = _no_byte_twice(storage.requests)
    data_files = sorted(str(p) for p in FIXTURE.glob("model.ckpt-7.data-*")) + sorted(
        str(p) for p in (SCENARIO_DIR / "ckpt_a").glob("model.ckpt.data-*")
    )
    assert sorted(by_file) == data_files
    assert sum(b - a for _, a, b in storage.requests) == sum(Path(p).stat().st_size for p in data_files)
    fixture = json.loads((FIXTURE / "expected.json").read_text())["tensors"]
    assert value_digest(big.numpy()) == fixture["big/part5"]["sha256"]
    assert value_digest(store.get("enc/scope2/nested/label").numpy()) == fixture["scope2/nested/label"]["sha256"]
    assert np.array_equal(w.numpy(), twin.numpy()) and w.numpy().any()
    assert not store.pending_restores()


def _needed_rows(index, name, regions):
    """Byte intervals of row ranges of a row-partitioned tensor: {file: [(start, end)]}."""
    entry = index.entry(name)
    row_bytes = _nbytes(entry.shape[1:], entry.dtype.itemsize)
    out: dict[str, list[tuple[int, int]]] = {}
    for r0, r1 in regions:
        for s in entry.slices:
            (s0, n), _ = s[0], s[1:]
            lo, hi = max(r0, s0), min(r1, s0 + n)
            if lo < hi:
                se = index.slice_entry(name, s)
                out.setdefault(index.data_file(se.shard_id), []).append(
                    (se.offset + (lo - s0) * row_bytes, se.offset + (hi - s0) * row_bytes)
                )
    return out


def test_subset_restore_reads_only_needed_bytes(count_fetch):
    """Parts of a re-partitioned variable, with ``verify=False``: only their rows are read
    (across stored slices), each byte once; anything else read is a gap the planner joined
    between two needed ranges. (With verify, the default, the stored entries these rows touch
    are read whole so their checksums can be checked: tests/test_verified_regions.py.)"""
    storage = CountingStorage()
    store = VariableStore()
    v3 = store.get_variable("v3", [100, 100], partitions=[4, 1], initializer=1.5)  # 25-row parts
    big = store.get_variable("big", [100, 8], partitions=[4, 1], initializer=1.5)
    init_from_checkpoint(PATHS["a"], {"old_scope_2/var3": [v3.parts[1], v3.parts[3]]}, store=store, storage=storage)
    init_from_checkpoint(PATHS["f"], {"big/part5": [big.parts[1]]}, store=store, storage=storage)
    storage.reset()
    store.initialize(verify=False)
    assert len(count_fetch) == 1
    needed = _needed_rows(store.checkpoint(PATHS["a"]), "old_scope_2/var3", [(25, 50), (75, 100)])
    for url, ivs in _needed_rows(store.checkpoint(PATHS["f"]), "big/part5", [(25, 50)]).items():
        needed.setdefault(url, []).extend(ivs)
    assert sum(b - a for ivs in needed.values() for a, b in ivs) == 2 * _nbytes([25, 100], 4) + _nbytes([25, 8], 4)
    by_file = _no_byte_twice(storage.requests)
    assert sorted(by_file) == sorted(needed)
    for url, reads in by_file.items():
        ivs = sorted(needed[url])
        starts, ends = {a for a, _ in ivs}, {b for _, b in ivs}
        for a, b in reads:
            assert a in starts and b in ends, f"{url}: read [{a}, {b}) does not start and end on needed bytes"
        covered = sum(min(b, e) - max(a, s) for a, b in reads for s, e in ivs if min(b, e) > max(a, s))
        assert covered == sum(e - s for s, e in ivs)
    assert (v3.parts[0].numpy() == 1.5).all() and (v3.parts[2].numpy() == 1.5).all()
    full = _load_full(PATHS["a"], "old_scope_2/var3")
    assert np.array_equal(v3.parts[3].numpy(), full[75:100])
    assert np.array_equal(big.parts[1].numpy(), _load_full(PATHS["f"], "big/part5")[25:50])


def _load_full(path, name):
    from distrestore.restore import TensorRequest, fetch

    return fetch([TensorRequest(open_checkpoint(path), name)])[0]


def test_index_is_read_once_per_checkpoint(monkeypatch):
    import distrestore.variable_store as vs

    opened = []
    real = vs.open_checkpoint
    monkeypatch.setattr(vs, "open_checkpoint", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    store = VariableStore()
    store.get_variable("x/v", [4])
    store.get_variable("y/w", [3, 4])
    for _ in range(3):
        init_from_checkpoint(PATHS["a"], {"dup/a": "x/v"}, store=store)
        init_from_checkpoint(PATHS["b"], {"w": "y/w"}, store=store)
    assert opened == [PATHS["a"], PATHS["b"]]
    # the directory and its latest prefix share one index object
    assert store.checkpoint(PATHS["a_prefix"]) is store.checkpoint(PATHS["a"])


def test_nothing_pending_means_no_fetch(count_fetch):
    store = VariableStore()
    store.get_variable("v", [2], initializer=3.0)
    store.initialize()
    assert count_fetch == []
    assert (store.get("v").numpy() == 3.0).all()


# -- failure atomicity ------------------------------------------------------------------------


def _store_over(ckpt: Path):
    store = VariableStore()
    p = store.get_variable("big", [100, 8], partitions=[2, 1], initializer=0.5)
    w = store.get_variable("enc/w", [3, 4], initializer=-1.0)
    n = store.get_variable("enc/n", [], "int32", initializer=7)
    keep = store.get_variable("keep", [2], initializer=2.0)
    init_from_checkpoint(str(ckpt), {"big/part5": "big", "scope1/w": w, "scope1/count": "enc/n"}, store=store)
    return store, [p, w, n, keep]


def _snapshot(objs):
    return [o.numpy().copy() for o in objs]


def test_corrupt_byte_leaves_every_variable_untouched(tmp_path):
    ckpt = tmp_path / "tf1_sharded"
    shutil.copytree(FIXTURE, ckpt)
    index = open_checkpoint(str(ckpt / "model.ckpt-7"))
    first = index.slice_entry("big/part5", index.entry("big/part5").slices[3])
    data = Path(index.data_file(first.shard_id))
    store, objs = _store_over(ckpt / "model.ckpt-7")
    before = _snapshot(objs)
    raw = bytearray(data.read_bytes())
    raw[first.offset + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(errors.DistRestoreError) as info:
        store.initialize()
    assert isinstance(info.value, ValueError)
    assert "big/part5" in str(info.value) or data.name in str(info.value)
    for b, o in zip(before, objs):
        assert np.array_equal(b, o.numpy()), o.name
    assert store.pending_restores()  # still pending: fix the file and run again
    raw[first.offset + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    store.initialize()
    assert (
        value_digest(objs[0].numpy())
        == json.loads((FIXTURE / "expected.json").read_text())["tensors"]["big/part5"]["sha256"]
    )
    assert np.array_equal(objs[3].numpy(), before[3])


def test_missing_data_file_leaves_every_variable_untouched(tmp_path):
    ckpt = tmp_path / "tf1_sharded"
    shutil.copytree(FIXTURE, ckpt)
    store, objs = _store_over(ckpt / "model.ckpt-7")
    before = _snapshot(objs)
    (ckpt / "model.ckpt-7.data-00003-of-00004").unlink()
    with pytest.raises(errors.DistRestoreError) as info:
        store.initialize()
    assert isinstance(info.value, (FileNotFoundError, OSError, ValueError))
    for b, o in zip(before, objs):
        assert np.array_equal(b, o.numpy()), o.name


def test_bad_engine_result_is_checked_before_assigning():
    store = VariableStore()
    a = store.get_variable("a", [4], initializer=1.0)
    b = store.get_variable("b", [4], initializer=2.0)
    init_from_checkpoint(PATHS["a"], {"dup/a": a, "dup/b": b}, store=store)

    def short(requests, **kw):
        return [np.zeros(4, np.float32), np.zeros(3, np.float32)]

    with pytest.raises(errors.ShapeMismatchError):
        store.initialize(fetch=short)
    assert (a.numpy() == 1.0).all() and (b.numpy() == 2.0).all()


def test_missing_checkpoint_fails_at_the_call():
    store = VariableStore()
    store.get_variable("v", [4])
    with pytest.raises(errors.CheckpointNotFoundError):
        init_from_checkpoint(str(SCENARIO_DIR / "nope" / "model.ckpt"), {"dup/a": "v"}, store=store)
    assert not store.pending_restores()


def test_remote_checkpoint_with_storage_options(memory_store):
    """An fsspec URL with ``storage_options=``: the same plan over remote storage."""
    url = memory_store.upload_fixture(FIXTURE)
    store = VariableStore()
    p = store.get_variable("p", [100, 8], partitions=[2, 1])
    w = store.get_variable("enc/w", [3, 4])
    init_from_checkpoint(
        url, {"big/part5": p, "scope1/": "enc/"}, store=store, storage_options=memory_store.storage_options
    )
    store.initialize()
    fixture = json.loads((FIXTURE / "expected.json").read_text())["tensors"]
    assert value_digest(p.numpy()) == fixture["big/part5"]["sha256"]
    assert value_digest(w.numpy()) == fixture["scope1/w"]["sha256"]
