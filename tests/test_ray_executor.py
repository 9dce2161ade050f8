"""The Ray executor on a single-node Ray session: bit-exact restores of the TF fixtures (vs
``expected.json`` and vs the thread executor), partitions and regions, the byte budget, errors
raised on the driver as distrestore's own types, what happens without ``ray.init``, the
shared-memory arena (used, left behind nowhere, released with the arrays, fallen back from) and
the warm pool.

One Ray session serves the module (``ray_fixtures.ray_local``); most tests share one executor so
its read actors start once.
"""

from __future__ import annotations

import gc
import glob
import logging
import os
import shutil
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from checks import load_expected  # noqa: E402
from fixtures.digest import value_digest  # noqa: E402
from ray_fixtures import write_checkpoint  # noqa: E402

from distrestore.assemble import Assembly  # noqa: E402
from distrestore.errors import (  # noqa: E402
    CheckpointNotFoundError,
    ChecksumMismatchError,
    DeadlineExceededError,
    DistRestoreError,
    RayNotInitializedError,
    RayPlacementError,
    ReadWorkerLostError,
    StorageError,
)
from distrestore.execute.threads import ThreadExecutor  # noqa: E402
from distrestore.index import open_checkpoint  # noqa: E402
from distrestore.plan import PACKED, SKIP, STAGED, PlanOptions, build_plan  # noqa: E402
from distrestore.ray import executor as ray_executor  # noqa: E402
from distrestore.ray import shm  # noqa: E402
from distrestore.ray.executor import RayExecutor  # noqa: E402
from distrestore.ray.pool import POOLS  # noqa: E402
from distrestore.restore import TensorRequest, fetch, iter_restore_tensors, plan_requests, restore_tensors  # noqa: E402
from distrestore.storage.wrappers import LatencyStorage  # noqa: E402

SLACK = 1.0  # seconds: a loaded machine, on top of the 10 %

pytestmark = pytest.mark.usefixtures("ray_local")

FIXTURES = ["tf1_sharded", "all_dtypes", "many_small", "merged", "tf2_keras", "saved_model"]


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and value_digest(a) == value_digest(b)


@pytest.fixture(scope="module")
def executor():
    """The shared executor (default options)."""
    ex = RayExecutor(local_reads="actors")
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def small_tasks():
    """Tiny tasks read through Storage.readinto by several threads and placed by several driver
    threads: many tasks in flight, the actors' reused buffers and threaded reads get exercised."""
    ex = RayExecutor(local_reads="actors", target_task_bytes=4096, threads_per_task=4, map_local=False, place_threads=3)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def shipping():
    """Results through the object store (no shared-memory arena), small tasks on two placers."""
    ex = RayExecutor(local_reads="actors", shared_memory=False, target_task_bytes=64 * 1024, place_threads=2)
    yield ex
    ex.close()


def check_route(ex, plan):
    """Every needed byte took the executor's route: written into the arena, or shipped."""
    s = ex.stats
    if ex.shared_memory:
        assert s.arena_bytes > 0 and s.bytes_shared == plan.bytes_needed and s.bytes_shipped == 0
    else:
        assert s.arena_bytes == 0 and s.bytes_shared == 0 and s.bytes_shipped == plan.bytes_needed


def arena_files():
    """This process's arena files that still have a name."""
    return glob.glob(os.path.join(shm.SHM_DIR, f"distrestore-{os.getpid()}-*"))


def arena_holders(pids=None) -> list[tuple[int, str]]:
    """(pid, fd path or mapping) of every process that still maps or has open one of this process's
    arenas: the memory is back once there is none."""
    tag = f"distrestore-{os.getpid()}-"
    found = []
    for pid in pids or [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if tag in link:
                    found.append((int(pid), f"/proc/{pid}/fd/{fd}"))
            with open(f"/proc/{pid}/maps") as f:
                found += [(int(pid), line.strip()) for line in f if tag in line]
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """About 9 MB over two shards: big tensors (mapped reads), small ones, odd dtypes, a string."""
    rng = np.random.default_rng(7)
    tensors = {f"dense/{i}/kernel": rng.standard_normal((512, 1024), dtype=np.float32) for i in range(4)}
    tensors.update({f"dense/{i}/bias": rng.standard_normal(1024).astype(np.float32) for i in range(4)})
    tensors["emb"] = rng.integers(-(2**40), 2**40, (300, 1000), dtype=np.int64)
    tensors["half"] = rng.standard_normal((100, 77)).astype(np.float16)
    tensors["step"] = np.array(42, dtype=np.int64)
    tensors["words"] = np.array([b"alpha", b"", b"\x00\xff" * 50], dtype=object)
    prefix = str(tmp_path_factory.mktemp("ray_big") / "model")
    write_checkpoint(prefix, tensors, num_shards=2)
    return prefix, tensors


# -- bit-exact restores ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_bit_exact(fixtures_dir, executor, small_tasks, shipping, name):
    prefix, exp = load_expected(fixtures_dir, name)
    want = {k: t for k, t in exp["tensors"].items() if t["sha256"] is not None}
    reference = restore_tensors(prefix, executor=ThreadExecutor())
    for ex in (executor, small_tasks, shipping):
        out = restore_tensors(prefix, executor=ex)
        assert set(want) <= set(out)
        for k, t in want.items():
            assert value_digest(out[k]) == t["sha256"], (name, k)
            assert list(np.shape(out[k])) == t["shape"], (name, k)
            assert same(out[k], reference[k]), (name, k)
        index = open_checkpoint(prefix)
        plan = plan_requests([TensorRequest(index, n) for n in out], ex)
        assert ex.stats.tasks >= 1 and ex.stats.bytes_read == plan.bytes_to_read
        check_route(ex, plan)


def test_local_files_are_read_in_the_driver_by_default(big_checkpoint):
    """Local files sit on the driver's node: the driver reads them itself, no actor starts."""
    prefix, tensors = big_checkpoint
    pools = set(POOLS.keys())
    ex = RayExecutor(num_workers=1, tasks_per_worker=5)  # a placement of its own
    assert ex.start() is ex and set(POOLS.keys()) == pools
    out = restore_tensors(prefix, executor=ex)
    assert all(same(out[k], v) for k, v in tensors.items())
    s = ex.stats
    assert s.route == "driver" and s.workers == s.tasks == s.bytes_shipped == s.bytes_shared == 0
    assert set(POOLS.keys()) == pools
    index = open_checkpoint(prefix)
    assert s.bytes_read == plan_requests([TensorRequest(index, n) for n in out], ex).bytes_to_read


def test_executor_by_name(fixtures_dir):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    out = restore_tensors(prefix, executor="ray")
    assert {k: value_digest(v) for k, v in out.items()} == {k: t["sha256"] for k, t in exp["tensors"].items()}


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
    regions = [
        ("big/part5", (slice(10, 50), slice(2, 6))),  # spans three stored slices
        ("big/part5", (slice(37, 38), slice(0, 8))),
        ("part_cols", (slice(1, 3), slice(2, 6))),  # a column block across both parts
        ("scope1/w", None),
    ]
    reqs = [TensorRequest(index, n, r) for n, r in regions]
    got = fetch(reqs, executor=executor)
    ref = fetch(reqs, executor=ThreadExecutor())
    for (n, r), a, b in zip(regions, got, ref):
        assert same(a, b)
        if r is not None:
            assert same(a, full[n][r])


def test_big_checkpoint_mapped_and_read(big_checkpoint, executor, small_tasks, shipping):
    prefix, tensors = big_checkpoint
    for ex in (executor, small_tasks, shipping):
        out = restore_tensors(prefix, executor=ex)
        assert set(out) == set(tensors)
        for k, v in tensors.items():
            assert same(out[k], v), k
        index = open_checkpoint(prefix)
        plan = plan_requests([TensorRequest(index, n) for n in out], ex)
        check_route(ex, plan)  # gaps are never shipped nor written
        assert ex.stats.bytes_read == plan.bytes_to_read


@pytest.mark.parametrize("shared_memory", [True, False])
@pytest.mark.parametrize("map_local", [True, False])
def test_coalesced_gaps_are_not_shipped(big_checkpoint, map_local, shared_memory):
    """A plan that joins ranges across unneeded bytes (SKIP segments): the actors read the gaps
    but ship (or write) only the needed bytes, from mapped reads as well as buffered ones."""
    prefix, tensors = big_checkpoint
    index = open_checkpoint(prefix)
    wanted = ["dense/0/kernel", "dense/2/kernel", "dense/1/bias", "dense/3/bias", "half", "step"]
    reqs = [TensorRequest(index, n) for n in wanted]
    plan = build_plan(reqs, PlanOptions(max_gap_bytes=4 << 20, max_request_bytes=32 << 20, workers=1, pack_bytes=0))
    assert any(seg.kind == SKIP for r in plan.requests for seg in r.segments)
    ex = RayExecutor(local_reads="actors", map_local=map_local, shared_memory=shared_memory)
    storages = {f: index.storage for f in index.data_files()}
    assembly = Assembly(plan, names=wanted, allocate=ex.allocator(plan, storages))
    got = {}
    for batch in ex.run(plan, assembly, storages):
        for i in batch:
            got[wanted[i]] = assembly.take(i)
    assert set(got) == set(wanted)
    assert all(same(got[n], tensors[n]) for n in wanted)
    assert ex.stats.bytes_read == plan.bytes_to_read > plan.bytes_needed
    check_route(ex, plan)


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
    ex = RayExecutor(local_reads="actors", target_task_bytes=1024)
    for _ in range(2):
        out = restore_tensors(f"{base}/{exp['prefix']}", executor=ex, storage_options=store.storage_options)
        assert {k: value_digest(v) for k, v in out.items()} == {k: t["sha256"] for k, t in exp["tensors"].items()}
        assert ex.stats.tasks > 1 and ex.stats.bytes_shipped > 0


# -- the byte budget ---------------------------------------------------------------------------


def test_budget_is_never_exceeded(big_checkpoint, executor):
    prefix, tensors = big_checkpoint
    budget = 64 * 1024
    progress = []
    out = restore_tensors(prefix, executor=executor, max_inflight_bytes=budget, progress=lambda *a: progress.append(a))
    assert all(same(out[k], v) for k, v in tensors.items())
    s = executor.stats
    assert 0 < s.max_inflight_bytes_seen <= budget
    assert s.tasks > 100  # ~9 MB in pieces of at most 64 KiB
    bytes_done, bytes_total, done, total = progress[-1]
    assert bytes_done == bytes_total == s.bytes_read and done == total == len(tensors)


def test_unbudgeted_run_keeps_more_in_flight(big_checkpoint):
    """The instrument of the budget test measures something: without a budget more is in flight."""
    prefix, _ = big_checkpoint
    ex = RayExecutor(local_reads="actors", target_task_bytes=1 << 20)
    restore_tensors(prefix, executor=ex)
    assert ex.stats.max_inflight_bytes_seen > 64 * 1024
    assert ex.stats.max_tasks_in_flight_seen > 1


def test_object_store_caps_inflight_bytes(big_checkpoint):
    prefix, _ = big_checkpoint
    ex = RayExecutor(local_reads="actors", target_task_bytes=1 << 20, max_tasks_in_flight=1000)
    cap = ex.object_store_cap()
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
@pytest.mark.parametrize("which", ["executor", "small_tasks", "shipping"])
def test_corrupt_byte_raises_checksum_mismatch(big_checkpoint, tmp_path, request, name, which):
    prefix = copy_checkpoint(big_checkpoint[0], tmp_path)
    corrupt(prefix, name, 1001)
    ex = request.getfixturevalue(which)
    with pytest.raises(ChecksumMismatchError) as info:
        restore_tensors(prefix, executor=ex)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, ray.exceptions.RayError)
    index = open_checkpoint(prefix)
    e = index.entry(name)
    where = f"{os.path.basename(index.data_file(e.shard_id))} bytes [{e.offset}, {e.offset + e.size})"
    assert repr(name) in str(info.value) and where in str(info.value)
    assert arena_files() == []
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
    ex = RayExecutor(local_reads="actors", map_local=map_local)
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
    ex = RayExecutor(local_reads="actors", num_workers=1, max_retries=0, target_task_bytes=64 * 1024)
    it = iter_restore_tensors(prefix, executor=ex, max_inflight_bytes=256 * 1024)
    next(it)
    [key] = ex.pool_keys
    for actor in POOLS.get(key).actors:
        ray.kill(actor, no_restart=True)
    with pytest.raises(ReadWorkerLostError) as info:
        list(it)
    assert isinstance(info.value, StorageError)
    assert "model.data-0000" in str(info.value) and "tensors '" in str(info.value)
    out = restore_tensors(prefix, executor=ex)  # a new pool
    assert all(same(out[k], v) for k, v in tensors.items())
    ex.close()


def test_deadline_bounds_the_wait_for_reads_that_do_not_stop(fixtures_dir):
    """A read the storage cannot cut (every attempt sleeps past the deadline, like a stuck local
    read) does not hold the run: like the thread executor, it waits at most a moment past the
    call's deadline and names what was outstanding."""
    storage = LatencyStorage(latency=0.0)
    index = open_checkpoint(str(fixtures_dir / "tf1_sharded" / "model.ckpt-7"), storage=storage)
    storage.latency = 5.0  # every data read of the actors now takes 5 s
    ex = RayExecutor(local_reads="actors", map_local=False, shared_memory=False, num_workers=1, tasks_per_worker=5)
    try:
        ex.start()  # a start-up of its own: the deadline is about the reads
        deadline = 1.0
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            restore_tensors(index, executor=ex, deadline=deadline)
        elapsed = time.monotonic() - t0
        assert elapsed <= deadline * 1.1 + SLACK, elapsed
        msg = str(info.value)
        assert "outstanding" in msg and "model.ckpt-7.data-" in msg and "tensors '" in msg, msg
        assert isinstance(info.value, TimeoutError)
    finally:
        ex.close()


def test_deadline_passing_while_the_read_workers_start(fixtures_dir, monkeypatch):
    prefix, _ = load_expected(fixtures_dir, "merged")
    ex = RayExecutor(local_reads="actors", num_workers=1, tasks_per_worker=6)
    monkeypatch.setattr(POOLS, "started_within", lambda pool, timeout: False)  # never up in time
    try:
        with pytest.raises(DeadlineExceededError, match="starting"):
            restore_tensors(prefix, executor=ex, deadline=30)
    finally:
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
    ex = RayExecutor(local_reads="actors", init_kwargs=kwargs)
    with caplog.at_level(logging.INFO, logger="distrestore"):
        out = restore_tensors(prefix, executor=ex)
    assert state["calls"] == [kwargs]
    assert any("ray.init(" in r.getMessage() for r in caplog.records)
    assert {k: value_digest(v) for k, v in out.items()} == {k: t["sha256"] for k, t in exp["tensors"].items()}
    ex._started_ray = False  # do not shut down the module's session
    ex.close()


def test_bad_options():
    with pytest.raises(ValueError):
        RayExecutor(nodes="everywhere")
    with pytest.raises(ValueError):
        RayExecutor(target_task_bytes=0)
    with pytest.raises(ValueError, match="local_reads"):
        RayExecutor(local_reads="nowhere")
    with pytest.raises(ValueError, match="no alive Ray node"):
        RayExecutor(nodes=["not-a-node"]).workers_for(True)
    with pytest.raises(RayPlacementError, match="no Ray node can host"):
        RayExecutor(local_reads="actors", resources={"no_such_resource": 1}).workers_for(True)


# -- the shared-memory arena ---------------------------------------------------------------------


def plan_of(prefix, names, ex, regions=None):
    index = open_checkpoint(prefix)
    return plan_requests([TensorRequest(index, n, r) for n, r in zip(names, regions or [None] * len(names))], ex)


def test_shared_memory_covers_direct_packed_staged_and_strings(fixtures_dir, big_checkpoint, executor):
    """On one node every needed byte is written by the actors into the driver's arena (none is
    shipped): big tensors (DIRECT), many small ones (PACKED), strings and column blocks (STAGED)."""
    prefix, tensors = big_checkpoint
    out = restore_tensors(prefix, executor=executor)
    assert all(same(out[k], v) for k, v in tensors.items())
    plan = plan_of(prefix, list(out), executor)
    kinds = {s.kind for r in plan.requests for s in r.segments}
    assert {PACKED, STAGED} <= kinds  # biases and the step packed, the string staged
    check_route(executor, plan)
    assert executor.stats.nodes == [ray.get_runtime_context().get_node_id()]

    prefix, _ = load_expected(fixtures_dir, "tf1_sharded")
    regions = [("part_cols", (slice(1, 3), slice(2, 6))), ("big/part5", (slice(10, 50), slice(2, 6)))]
    names, boxes = [n for n, _ in regions], [r for _, r in regions]
    index = open_checkpoint(prefix)
    reqs = [TensorRequest(index, n, r) for n, r in regions]
    got = fetch(reqs, executor=executor)
    ref = fetch(reqs, executor=ThreadExecutor())
    assert all(same(a, b) for a, b in zip(got, ref))
    plan = plan_of(prefix, names, executor, boxes)
    assert any(s.kind == STAGED for r in plan.requests for s in r.segments)
    check_route(executor, plan)


def test_arena_is_unlinked_during_and_after_runs(big_checkpoint, tmp_path, executor):
    prefix, tensors = big_checkpoint
    it = iter_restore_tensors(prefix, executor=executor, max_inflight_bytes=1 << 20)
    next(it)
    # the actors opened it before the first read: the name is already gone, the memory is not
    assert arena_files() == [] and arena_holders([os.getpid()])
    rest = dict(it)
    assert len(rest) == len(tensors) - 1 and arena_files() == []
    bad = copy_checkpoint(prefix, tmp_path)
    corrupt(bad, "dense/0/kernel")
    with pytest.raises(ChecksumMismatchError):
        restore_tensors(bad, executor=executor)
    assert arena_files() == []


def test_arena_memory_is_released_with_the_arrays(big_checkpoint, executor):
    prefix, tensors = big_checkpoint
    gc.collect()
    assert arena_holders() == []
    out = restore_tensors(prefix, executor=executor)
    held = arena_holders()
    # the driver maps it (and keeps a descriptor to punch holes); the actors closed theirs
    assert held and {pid for pid, _ in held} == {os.getpid()}
    fds = {int(link.rsplit("/", 1)[1]) for pid, link in held if link.startswith("/proc/")}
    assert len(fds) == 1, held
    [fd] = fds
    before = os.fstat(fd).st_blocks * 512
    del out["dense/0/kernel"]  # 2 MiB, a mapping of its own: its pages go back at once
    gc.collect()
    assert before - os.fstat(fd).st_blocks * 512 >= tensors["dense/0/kernel"].nbytes
    kept = out["dense/1/kernel"]
    del out
    gc.collect()
    assert arena_holders([os.getpid()])  # a surviving array keeps its memory
    assert same(kept, tensors["dense/1/kernel"])
    del kept
    gc.collect()
    assert arena_holders() == []  # no process maps it or has it open: the memory is free


def test_no_room_in_shm_falls_back_to_the_object_store(big_checkpoint, monkeypatch, executor):
    prefix, tensors = big_checkpoint
    monkeypatch.setattr(shm, "free_bytes", lambda directory: 8 << 20)  # less than the 9 MB asked for
    out = restore_tensors(prefix, executor=executor)
    assert all(same(out[k], v) for k, v in tensors.items())
    s = executor.stats
    plan = plan_of(prefix, list(out), executor)
    assert s.arena_bytes == 0 and s.bytes_shared == 0 and s.bytes_shipped == plan.bytes_needed

    def no_shm(directory):
        raise FileNotFoundError(directory)  # what statvfs says where there is no /dev/shm at all

    monkeypatch.setattr(shm, "free_bytes", no_shm)
    out = restore_tensors(prefix, executor=executor)
    assert all(same(out[k], v) for k, v in tensors.items())
    assert executor.stats.arena_bytes == 0 and executor.stats.bytes_shipped == plan.bytes_needed


def test_restarted_worker_ships_instead(big_checkpoint):
    """An actor that Ray restarts mid-run has lost the arena (its name is gone): its tasks come
    back through the object store, and the run still completes bit-exact."""
    prefix, tensors = big_checkpoint
    ex = RayExecutor(local_reads="actors", num_workers=1, max_retries=2, target_task_bytes=64 * 1024)
    try:
        it = iter_restore_tensors(prefix, executor=ex, max_inflight_bytes=512 * 1024)
        first = dict([next(it)])
        [key] = ex.pool_keys
        ray.kill(POOLS.get(key).actors[0], no_restart=False)
        out = {**first, **dict(it)}
        assert all(same(out[k], v) for k, v in tensors.items())
        s = ex.stats
        assert s.bytes_shared > 0 and s.bytes_shipped > 0
        assert s.bytes_shared + s.bytes_shipped == plan_of(prefix, list(out), ex).bytes_needed
        assert arena_files() == []
    finally:
        ex.close()


# -- the warm pool -------------------------------------------------------------------------------


def test_start_brings_the_pool_up_before_the_first_restore(big_checkpoint):
    prefix, tensors = big_checkpoint
    ex = RayExecutor(local_reads="actors", num_workers=1, tasks_per_worker=3)  # a placement of its own
    try:
        assert ex.start() is ex
        [key] = ex.pool_keys
        assert POOLS.get(key).checked  # up, not merely requested
        out = restore_tensors(prefix, executor=ex)
        assert ex.stats.startup_seconds < 0.01
        assert all(same(out[k], v) for k, v in tensors.items())
        # a second executor of the same placement (as executor="ray" makes) shares the pool
        other = RayExecutor(local_reads="actors", num_workers=1, tasks_per_worker=3)
        restore_tensors(prefix, ["step"], executor=other)
        assert other.stats.startup_seconds < 0.01 and other.pool_keys == ex.pool_keys
    finally:
        ex.close()
    remote = RayExecutor(num_workers=1, tasks_per_worker=3).start(local=False, remote=True)
    try:
        [key] = remote.pool_keys
        assert key[1].where == "spread" and POOLS.get(key).checked
    finally:
        remote.close()
