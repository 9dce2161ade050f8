"""The restore engine end to end on local files: thread executor, budget, streaming, progress."""

from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import pytest

import distrestore as dr
from distrestore.execute.threads import ThreadExecutor
from distrestore.index import open_checkpoint
from distrestore.storage.wrappers import LatencyStorage


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    rng = np.random.default_rng(7)
    tensors = {f"big/{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(8)}
    tensors.update({f"small/{i:03d}": rng.integers(-9, 9, (i % 7 + 1,)).astype(np.int64) for i in range(300)})
    tensors["words"] = np.array([b"alpha", b"", b"\x00\xff", "ü".encode()], dtype=object)
    tensors["bf"] = rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16)
    tensors["scalar"] = np.float64(2.5)
    prefix = dr.save_tensors(str(tmp_path_factory.mktemp("ck") / "model"), tensors, num_shards=3)
    return prefix, tensors


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if b.dtype == object:
        return a.shape == b.shape and list(a.reshape(-1)) == list(b.reshape(-1))
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("workers", [1, 4])
def test_restore_all_bit_exact(ckpt, workers):
    prefix, tensors = ckpt
    out = dr.restore_tensors(prefix, executor=ThreadExecutor(workers))
    assert out.keys() == tensors.keys()
    assert all(same(out[k], v) for k, v in tensors.items())


def test_budget_bounds_bytes_in_flight(ckpt):
    prefix, tensors = ckpt
    storage = LatencyStorage(latency=0.002)  # slowed, so reads overlap
    index = open_checkpoint(prefix, storage=storage)
    storage.reset()
    budget = 64 * 1024
    reqs = [dr.TensorRequest(index, n) for n in tensors]
    arrays = dr.fetch(reqs, executor=ThreadExecutor(8), max_inflight_bytes=budget)
    assert all(same(a, tensors[r.name]) for r, a in zip(reqs, arrays))
    assert storage.calls["readinto"] > 8  # the 2 MiB of data needed many reads under a 64 KiB budget
    assert 0 < storage.max_inflight_bytes <= budget


def test_streaming_yields_every_tensor_once_and_frees_them(ckpt):
    prefix, tensors = ckpt
    seen = {}
    for name, arr in dr.iter_restore_tensors(prefix, max_inflight_bytes=128 * 1024):
        assert name not in seen
        seen[name] = arr.copy() if arr.dtype != object else arr
    assert seen.keys() == tensors.keys()
    assert all(same(seen[k], v) for k, v in tensors.items())


def test_progress_callback_reaches_totals(ckpt):
    prefix, tensors = ckpt
    calls = []
    dr.restore_tensors(prefix, progress=lambda *a: calls.append(a))
    bytes_done, bytes_total, done, total = calls[-1]
    assert bytes_done == bytes_total > 0 and done == total == len(tensors)
    assert all(a[0] <= a[1] for a in calls)


def test_regions_and_duplicates(ckpt):
    prefix, tensors = ckpt
    index = open_checkpoint(prefix)
    region = (slice(10, 20), slice(100, 110))
    a, b, c = dr.fetch(
        [dr.TensorRequest(index, "big/3", region), dr.TensorRequest(index, "big/3"), dr.TensorRequest(index, "big/3")]
    )
    assert same(a, tensors["big/3"][10:20, 100:110])
    assert same(b, tensors["big/3"]) and same(c, tensors["big/3"])
    c[0, 0] = 99  # duplicates are independent arrays
    assert b[0, 0] != 99


def test_failed_read_returns_nothing_and_names_the_tensor(ckpt, tmp_path):
    prefix, tensors = ckpt
    import shutil

    copy = str(tmp_path / "model")
    for suffix in [".index"] + [f".data-0000{i}-of-00003" for i in range(3)]:
        shutil.copy(prefix + suffix, copy + suffix)
    index = open_checkpoint(copy)
    e = index.entry("big/5")
    path = index.data_file(e.shard_id)
    with open(path, "r+b") as f:
        f.seek(e.offset + 1000)
        byte = f.read(1)
        f.seek(e.offset + 1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(dr.ChecksumMismatchError, match=r"big/5.*bytes \[") as info:
        dr.restore_tensors(copy)
    assert isinstance(info.value, ValueError) and path in str(info.value)
    # without verification the corrupt value comes back as stored
    out = dr.restore_tensors(copy, ["big/5"], verify=False)
    assert not same(out["big/5"], tensors["big/5"])


def test_plan_requests_is_printable(ckpt):
    prefix, tensors = ckpt
    index = open_checkpoint(prefix)
    text = str(dr.plan_requests([dr.TensorRequest(index, n) for n in tensors]))
    assert text.startswith(f"ReadPlan: {len(tensors)} outputs") and ".data-00002-of-00003" in text


class RecordingExecutor:
    """A thread executor that records what it was asked, the collector's state while it reads,
    and (when ``arena``) supplies the buffers reads land in through ``allocator``."""

    def __init__(self, arena: bool = False):
        self.inner = ThreadExecutor(2)
        self.calls: list[str] = []
        self.buffers: dict = {}
        self.gc_during_run: list[bool] = []
        if arena:
            self.allocator = self._allocator

    def workers_for(self, local):
        self.calls.append("workers_for")
        return self.inner.workers_for(local)

    def _allocator(self, plan, storages):
        self.calls.append("allocator")

        def allocate(kind, target, nbytes):
            buf = self.buffers[(kind, target)] = np.empty(nbytes, np.uint8)
            return buf

        return allocate

    def run(self, plan, sink, storages, **kw):
        self.calls.append("run")
        for batch in self.inner.run(plan, sink, storages, **kw):
            self.gc_during_run.append(gc.isenabled())
            yield batch


def test_planning_asks_the_executor_only_how_wide_it_is(ckpt):
    prefix, tensors = ckpt
    index = open_checkpoint(prefix)
    ex = RecordingExecutor(arena=True)
    dr.plan_requests([dr.TensorRequest(index, n) for n in tensors], ex)
    assert ex.calls == ["workers_for"]


def test_an_executors_allocator_holds_the_outputs(ckpt):
    prefix, tensors = ckpt
    ex = RecordingExecutor(arena=True)
    out = dr.restore_tensors(prefix, ["big/1", "small/003"], executor=ex)
    assert ex.calls == ["workers_for", "allocator", "run"]
    assert same(out["big/1"], tensors["big/1"]) and same(out["small/003"], tensors["small/003"])
    assert any(np.shares_memory(out["big/1"], b) for b in ex.buffers.values())
    assert any(np.shares_memory(out["small/003"], b) for b in ex.buffers.values())


def test_the_collector_runs_while_reading(ckpt):
    prefix, tensors = ckpt
    assert gc.isenabled()
    ex = RecordingExecutor()
    out = dr.restore_tensors(prefix, executor=ex)
    assert len(out) == len(tensors)
    assert ex.gc_during_run and all(ex.gc_during_run)  # paused only while planning, not around I/O
    assert gc.isenabled()
