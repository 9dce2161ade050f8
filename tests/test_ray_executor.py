"""The Ray executor on a single-node Ray session: bit-exact restores of the TF fixtures (vs
``expected.json`` and vs the thread executor), partitions and regions, the byte budget, errors
raised on the driver as distrestore's own types, and what happens without ``ray.init``.

One Ray session serves the module (``ray_fixtures.ray_local``); most tests share one executor so
its read actors start once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from distrestore.assemble import Assembly  # noqa: E402
from distrestore.errors import (ChecksumMismatchError, CheckpointNotFoundError,  # noqa: E402
                                DistRestoreError, StorageError)
from distrestore.execute import ray as ray_executor  # noqa: E402
from distrestore.execute.ray import (RayExecutor, RayNotInitializedError,  # noqa: E402
                                     RayPlacementError, ReadWorkerLostError)
from distrestore.execute.threads import ThreadExecutor  # noqa: E402
from distrestore.index import open_checkpoint  # noqa: E402
from distrestore.plan import SKIP, PlanOptions, build_plan  # noqa: E402
from distrestore.restore import (TensorRequest, fetch, iter_restore_tensors,  # noqa: E402
                                 plan_requests, restore_tensors)
from fixtures.digest import value_digest  # noqa: E402
from ray_fixtures import ray_local, write_checkpoint  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("ray_local")

FIXTURES = ["tf1_sharded", "all_dtypes", "many_small", "merged", "tf2_keras", "saved_model"]


def load_expected(fixtures_dir, name):
    d = fixtures_dir / name
    exp = json.loads((d / "expected.json").read_text())
    return str(d / exp["prefix"]), exp


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and value_digest(a) == value_digest(b)


@pytest.fixture(scope="module")
def executor():
    """The shared executor (default options)."""
    ex = RayExecutor()
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def small_tasks():
    """Tiny tasks read through Storage.readinto by several threads and placed by several driver
    threads: many tasks in flight, the actors' reused buffers and threaded reads get exercised."""
    ex = RayExecutor(target_task_bytes=4096, threads_per_task=4, map_local=False, place_threads=3)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """About 9 MB over two shards: big tensors (mapped reads), small ones, odd dtypes, a string."""
    rng = np.random.default_rng(7)
    tensors = {f"dense/{i}/kernel": rng.standard_normal((512, 1024), dtype=np.float32)
               for i in range(4)}
    tensors.update({f"dense/{i}/bias": rng.standard_normal(1024).astype(np.float32) for i in range(4)})
    tensors["emb"] = rng.integers(-2**40, 2**40, (300, 1000), dtype=np.int64)
    tensors["half"] = rng.standard_normal((100, 77)).astype(np.float16)
    tensors["step"] = np.array(42, dtype=np.int64)
    tensors["words"] = np.array([b"alpha", b"", b"\x00\xff" * 50], dtype=object)
    prefix = str(tmp_path_factory.mktemp("ray_big") / "model")
    write_checkpoint(prefix, tensors, num_shards=2)
    return prefix, tensors


# -- bit-exact restores ------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_bit_exact(fixtures_dir, executor, small_tasks, name):
    prefix, exp = load_expected(fixtures_dir, name)
    want = {k: t for k, t in exp["tensors"].items() if t["sha256"] is not None}
    reference = restore_tensors(prefix, executor=ThreadExecutor())
    for ex in (executor, small_tasks):
        out = restore_tensors(prefix, executor=ex)
        assert set(want) <= set(out)
        for k, t in want.items():
            assert value_digest(out[k]) == t["sha256"], (name, k)
            assert list(np.shape(out[k])) == t["shape"], (name, k)
            assert same(out[k], reference[k]), (name, k)
        index = open_checkpoint(prefix)
        plan = plan_requests([TensorRequest(index, n) for n in out], ex)
        assert ex.stats.tasks >= 1 and ex.stats.bytes_read == plan.bytes_to_read
        assert ex.stats.bytes_shipped == plan.bytes_needed


def test_executor_by_name(fixtures_dir):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    out = restore_tensors(prefix, executor="ray")
    assert {k: value_digest(v) for k, v in out.items()} == {
        k: t["sha256"] for k, t in exp["tensors"].items()}


def test_small_tasks_run_concurrently(big_checkpoint, small_tasks):
    restore_tensors(big_checkpoint[0], executor=small_tasks)
    s = small_tasks.stats
    assert s.tasks > 1
    assert s.max_tasks_in_flight_seen > 1
    assert s.workers == 2 and s.nodes == [ray.get_runtime_context().get_node_id()]


def test_regions_and_partitions(fixtures_dir, executor):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    index = open_checkpoint(prefix)
    full = restore_tensors(prefix, ["big/part5", "part_cols"], executor=executor)
    assert value_digest(full["big/part5"]) == exp["partition_full_sha256"]["big/part5"]
    regions = [("big/part5", (slice(10, 50), slice(2, 6))),   # spans three stored slices
               ("big/part5", (slice(37, 38), slice(0, 8))),
               ("part_cols", (slice(1, 3), slice(2, 6))),     # a column block across both parts
               ("scope1/w", None)]
    reqs = [TensorRequest(index, n, r) for n, r in regions]
    got = fetch(reqs, executor=executor)
    ref = fetch(reqs, executor=ThreadExecutor())
    for (n, r), a, b in zip(regions, got, ref):
        assert same(a, b)
        if r is not None:
            assert same(a, full[n][r])


def test_big_checkpoint_mapped_and_read(big_checkpoint, executor, small_tasks):
    prefix, tensors = big_checkpoint
    for ex in (executor, small_tasks):
        out = restore_tensors(prefix, executor=ex)
        assert set(out) == set(tensors)
        for k, v in tensors.items():
            assert same(out[k], v), k
        index = open_checkpoint(prefix)
        plan = plan_requests([TensorRequest(index, n) for n in out], ex)
        assert ex.stats.bytes_shipped == plan.bytes_needed  # gaps never travel
        assert ex.stats.bytes_read == plan.bytes_to_read


@pytest.mark.parametrize("map_local", [True, False])
def test_coalesced_gaps_are_not_shipped(big_checkpoint, map_local):
    """A plan that joins ranges across unneeded bytes (SKIP segments): the actors read the gaps
    but ship only the needed bytes, from mapped reads as well as buffered ones."""
    prefix, tensors = big_checkpoint
    index = open_checkpoint(prefix)
    wanted = ["dense/0/kernel", "dense/2/kernel", "dense/1/bias", "dense/3/bias", "half", "step"]
    reqs = [TensorRequest(index, n) for n in wanted]
    plan = build_plan(reqs, PlanOptions(max_gap_bytes=4 << 20, max_request_bytes=32 << 20,
                                        workers=1, pack_bytes=0))
    assert any(seg.kind == SKIP for r in plan.requests for seg in r.segments)
    ex = RayExecutor(map_local=map_local)
    assembly = Assembly(plan, names=wanted)
    storages = {f: index.storage for f in index.data_files()}
    got = {}
    for batch in ex.run(plan, assembly, storages):
        for i in batch:
            got[wanted[i]] = assembly.take(i)
    assert set(got) == set(wanted)
    assert all(same(got[n], tensors[n]) for n in wanted)
    assert ex.stats.bytes_read == plan.bytes_to_read > plan.bytes_needed == ex.stats.bytes_shipped


def test_streaming_under_budget(big_checkpoint, executor):
    prefix, tensors = big_checkpoint
    seen = {}
    for name, arr in iter_restore_tensors(prefix, executor=executor, max_inflight_bytes=1 << 20):
        assert name not in seen
        seen[name] = arr
    assert set(seen) == set(tensors)
    assert all(same(seen[k], v) for k, v in tensors.items())
    assert executor.stats.max_inflight_bytes_seen <= 1 << 20


@pytest.mark.parametrize("store", ["s3_server", "gcs_server"])
def test_object_store_checkpoint(fixtures_dir, request, store):
    """Actors re-create the filesystem from the pickled Storage (protocol + storage_options) and
    read the bucket themselves; a second restore reuses their filesystems."""
    store = request.getfixturevalue(store)
    base = store.upload_fixture(fixtures_dir / "tf1_sharded")
    _, exp = load_expected(fixtures_dir, "tf1_sharded")
    ex = RayExecutor(target_task_bytes=1024)
    for _ in range(2):
        out = restore_tensors(f"{base}/{exp['prefix']}", executor=ex,
                              storage_options=store.storage_options)
        assert {k: value_digest(v) for k, v in out.items()} == {
            k: t["sha256"] for k, t in exp["tensors"].items()}
        assert ex.stats.tasks > 1 and ex.stats.bytes_shipped > 0


# -- the byte budget ---------------------------------------------------------------------------

def test_budget_is_never_exceeded(big_checkpoint, executor):
    prefix, tensors = big_checkpoint
    budget = 64 * 1024
    progress = []
    out = restore_tensors(prefix, executor=executor, max_inflight_bytes=budget,
                          progress=lambda *a: progress.append(a))
    assert all(same(out[k], v) for k, v in tensors.items())
    s = executor.stats
    assert 0 < s.max_inflight_bytes_seen <= budget
    assert s.tasks > 100  # ~9 MB in pieces of at most 64 KiB
    bytes_done, bytes_total, done, total = progress[-1]
    assert bytes_done == bytes_total == s.bytes_read and done == total == len(tensors)


def test_unbudgeted_run_keeps_more_in_flight(big_checkpoint):
    """The instrument of the budget test measures something: without a budget more is in flight."""
    prefix, _ = big_checkpoint
    ex = RayExecutor(target_task_bytes=1 << 20)
    restore_tensors(prefix, executor=ex)
    assert ex.stats.max_inflight_bytes_seen > 64 * 1024
    assert ex.stats.max_tasks_in_flight_seen > 1


def test_object_store_caps_inflight_bytes(big_checkpoint):
    prefix, _ = big_checkpoint
    ex = RayExecutor(target_task_bytes=1 << 20, max_tasks_in_flight=1000)
    cap = ex._object_store_cap()
    assert cap and cap <= 200 * 2**20
    restore_tensors(prefix, executor=ex)
    assert ex.stats.max_inflight_bytes_seen <= cap


# -- errors ------------------------------------------------------------------------------------

def copy_checkpoint(prefix: str, dest) -> str:
    src_dir, base = os.path.split(prefix)
    for f in os.listdir(src_dir):
        if f.startswith(base + "."):
            shutil.copy(os.path.join(src_dir, f), dest / f)
    return str(dest / base)


def corrupt(prefix: str, name: str, offset_in_tensor: int = 0) -> None:
    index = open_checkpoint(prefix)
    e = index.entry(name)
    path = index.data_file(e.shard_id)
    offset_in_tensor %= e.size
    with open(path, "r+b") as f:
        f.seek(e.offset + offset_in_tensor)
        b = f.read(1)
        f.seek(e.offset + offset_in_tensor)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("name", ["dense/2/kernel", "dense/1/bias", "words"])
@pytest.mark.parametrize("which", ["default", "small_tasks"])
def test_corrupt_byte_raises_checksum_mismatch(big_checkpoint, tmp_path, request, name, which):
    prefix = copy_checkpoint(big_checkpoint[0], tmp_path)
    corrupt(prefix, name, 1001)
    ex = request.getfixturevalue("executor" if which == "default" else "small_tasks")
    with pytest.raises(ChecksumMismatchError) as info:
        restore_tensors(prefix, executor=ex)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, ray.exceptions.RayError)
    assert repr(name) in str(info.value)
    # the executor is still usable afterwards
    good = restore_tensors(big_checkpoint[0], ["dense/2/kernel"], executor=ex)
    assert same(good["dense/2/kernel"], big_checkpoint[1]["dense/2/kernel"])


def test_missing_data_file(big_checkpoint, tmp_path, executor):
    prefix = copy_checkpoint(big_checkpoint[0], tmp_path)
    index = open_checkpoint(prefix)
    victim = index.data_file(index.entry("emb").shard_id)
    os.remove(victim)
    with pytest.raises(CheckpointNotFoundError) as info:
        restore_tensors(prefix, executor=executor)
    e = info.value
    assert isinstance(e, FileNotFoundError) and isinstance(e, DistRestoreError)
    assert not isinstance(e, ray.exceptions.RayError)
    assert os.path.basename(victim) in str(e) and "reading tensors" in str(e)


@pytest.mark.parametrize("map_local", [True, False])
def test_truncated_data_file(big_checkpoint, tmp_path, map_local):
    prefix = copy_checkpoint(big_checkpoint[0], tmp_path)
    index = open_checkpoint(prefix)
    e = index.entry("dense/3/kernel")
    path = index.data_file(e.shard_id)
    os.truncate(path, e.offset + e.size // 2)
    ex = RayExecutor(map_local=map_local)
    with pytest.raises(StorageError) as info:
        restore_tensors(prefix, ["dense/3/kernel"], executor=ex)
    msg = str(info.value)
    assert os.path.basename(path) in msg and "shorter" in msg and "'dense/3/kernel'" in msg
    assert not isinstance(info.value, ray.exceptions.RayError)


def test_early_close_cancels_and_recovers(big_checkpoint, executor):
    prefix, tensors = big_checkpoint
    it = iter_restore_tensors(prefix, executor=executor, max_inflight_bytes=256 * 1024)
    next(it)
    it.close()
    out = restore_tensors(prefix, executor=executor)
    assert all(same(out[k], v) for k, v in tensors.items())


def test_dead_worker_fails_the_run_and_the_pool_is_rebuilt(big_checkpoint):
    prefix, tensors = big_checkpoint
    ex = RayExecutor(num_workers=1, max_retries=0, target_task_bytes=64 * 1024)
    it = iter_restore_tensors(prefix, executor=ex, max_inflight_bytes=256 * 1024)
    next(it)
    [key] = ex._keys
    for actor in ray_executor._POOLS[key].actors:
        ray.kill(actor, no_restart=True)
    with pytest.raises(ReadWorkerLostError) as info:
        list(it)
    assert isinstance(info.value, StorageError)
    assert "model.data-0000" in str(info.value) and "tensors '" in str(info.value)
    out = restore_tensors(prefix, executor=ex)  # a new pool
    assert all(same(out[k], v) for k, v in tensors.items())
    ex.close()


# -- without ray.init ---------------------------------------------------------------------------

def test_requires_initialized_ray(fixtures_dir, monkeypatch):
    prefix, _ = load_expected(fixtures_dir, "merged")
    monkeypatch.setattr(ray_executor.ray, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(ray_executor.ray, "init", lambda *a, **k: calls.append((a, k)))
    with pytest.raises(RayNotInitializedError, match="ray.init"):
        restore_tensors(prefix, executor="ray")
    assert calls == []  # never started or joined a Ray behind the caller's back


def test_init_kwargs_calls_ray_init_and_logs(fixtures_dir, monkeypatch, caplog):
    prefix, exp = load_expected(fixtures_dir, "merged")
    state = {"up": False, "calls": []}
    monkeypatch.setattr(ray_executor.ray, "is_initialized", lambda: state["up"])

    def fake_init(**kwargs):  # Ray is in fact running already: pretend this call started it
        state["calls"].append(kwargs)
        state["up"] = True
    monkeypatch.setattr(ray_executor.ray, "init", fake_init)
    kwargs = {"address": "local", "num_cpus": 2}
    ex = RayExecutor(init_kwargs=kwargs)
    with caplog.at_level(logging.INFO, logger="distrestore"):
        out = restore_tensors(prefix, executor=ex)
    assert state["calls"] == [kwargs]
    assert any("ray.init(" in r.getMessage() for r in caplog.records)
    assert {k: value_digest(v) for k, v in out.items()} == {
        k: t["sha256"] for k, t in exp["tensors"].items()}
    ex._started_ray = False  # do not shut down the module's session
    ex.close()


def test_bad_options():
    with pytest.raises(ValueError):
        RayExecutor(nodes="everywhere")
    with pytest.raises(ValueError):
        RayExecutor(target_task_bytes=0)
    with pytest.raises(ValueError, match="no alive Ray node"):
        RayExecutor(nodes=["not-a-node"]).workers_for(True)
    with pytest.raises(RayPlacementError, match="no Ray node can host"):
        RayExecutor(resources={"no_such_resource": 1}).workers_for(True)
