"""Faults on the wire: real S3 (moto) and GCS (fake-gcs-server) behind a fault-injecting proxy.

* transient faults (5xx, 429, resets, truncated bodies, stalls) at 5 % and 20 % of all requests:
  every restore bit-exact;
* a black-holed shard or endpoint: the restore fails with a ``DeadlineExceededError`` naming the
  file, range and tensors within the deadline + 10 %;
* a stalled request with ``timeout=`` is abandoned and retried as the policy says;
* permanent errors (access denied, no such key or bucket, no credentials, name resolution) fail
  after one attempt; a refused connection is retried only within ``RetryPolicy.refused_window``.

The proxy is ``tests/fault_proxy.py``; its log counts what reached the wire.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from checks import assert_bit_exact
from conftest import FIXTURES_DIR
from fault_fixtures import PATIENT, Faulty
from fault_proxy import FaultProxy, wait_until
from test_remote import check_values, expected

import distrestore as dr
from distrestore.errors import CheckpointNotFoundError, DeadlineExceededError, StorageError
from distrestore.storage import RetryPolicy, Storage
from distrestore.storage.wrappers import CountingStorage, LatencyStorage

# restored together under faults: ~60 requests per backend (indexes, state files, data shards)
FIXTURES = ("tf1_sharded", "many_small", "all_dtypes", "merged", "tf2_keras")
SLACK = 1.0  # seconds: a loaded CI machine, on top of the 10 %
# Permanent errors: the attempt counts are the check; this bound only catches a return of the old
# retry loops (55 s for an unreachable endpoint), with room for a loaded 2-core CI machine.
AT_ONCE = 5.0


def _restore(faulty: Faulty, fixture: str, storage: Storage, timeout=None, **kw) -> dict:
    index = dr.open_checkpoint(f"{faulty.url(fixture)}/{expected(fixture)['prefix']}", storage=storage, timeout=timeout)
    return dr.restore_tensors(index, timeout=timeout, **kw)


# -- transient faults: retried to a bit-exact result ------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A 3 MiB checkpoint of 48 tensors in 4 shards: with a small byte budget, a restore of it is
    ~50 range requests (the TF fixtures are a few KiB each, a request or two per file)."""
    rng = np.random.default_rng(11)
    tensors = {f"layer_{i:02d}/w": rng.standard_normal((128, 128)).astype(np.float32) for i in range(48)}
    root = tmp_path_factory.mktemp("generated")
    dr.save_tensors(str(root / "model"), tensors, num_shards=4)
    return root, tensors


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_generated_checkpoint_bit_exact_under_faults(faulty, generated, rate):
    root, tensors = generated
    url = faulty.store.upload_fixture(root)
    faulty.proxy.set_rate(rate, kinds=("500", "503", "429", "reset", "truncate", "stall"))
    index = dr.open_checkpoint(f"{url}/model", storage=faulty.storage(), timeout=1.0)
    for _ in range(2):
        values = dr.restore_tensors(index, timeout=1.0, max_inflight_bytes=128 << 10)
        assert values.keys() == tensors.keys()
        for name, want in tensors.items():
            assert_bit_exact(values[name], want, name)
    print(f"{faulty.name} at {rate:.0%}: {faulty.proxy.faults()} faults in {faulty.proxy.requests()} requests")
    assert faulty.proxy.faults() >= (1 if rate < 0.1 else 8)


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_every_restore_bit_exact_under_faults(faulty, rate):
    kinds = ("500", "503", "429", "reset", "truncate", "stall")
    requests = faults = 0
    for fixture in FIXTURES:
        faulty.proxy.clear()
        faulty.proxy.set_rate(rate, kinds=kinds)
        # a small byte budget cuts the data into many range requests (more requests, more faults)
        values = _restore(faulty, fixture, faulty.storage(), timeout=1.0, max_inflight_bytes=16 << 10)
        check_values(values, expected(fixture)["tensors"], f"{faulty.name}:{fixture} at {rate:.0%} faults")
        requests += faulty.proxy.requests()
        faults += faulty.proxy.faults()
    print(f"{faulty.name} at {rate:.0%}: {faults} faults in {requests} requests")
    assert faults >= 1  # the test means something only if faults reached the client


def test_fault_counts_are_real(faulty):
    # at 20 %, a restore of every fixture sees dozens of faults of each kind over the suite; here
    # one deterministic case per kind, so a kind the client mishandles shows by name
    fixture = "tf1_sharded"
    for kind in ("500", "503", "429", "reset", "truncate", "stall"):
        faulty.proxy.clear()
        faulty.proxy.add_rule(kind, match="data-00001", times=2)
        values = _restore(faulty, fixture, faulty.storage(), timeout=1.0)
        check_values(values, expected(fixture)["tensors"], f"{faulty.name}: {kind}")
        assert faulty.proxy.faults(kind) == 2, kind
        assert faulty.proxy.requests("data-00001") >= 3, kind  # two faults, then the answer


# -- stalls and black holes: timeouts and deadlines that hold -------------------------------------


def test_blackholed_shard_fails_within_deadline(faulty):
    url = faulty.url("tf1_sharded")
    index = dr.open_checkpoint(url, storage=faulty.storage())
    faulty.proxy.add_rule("blackhole", match="data-00001")
    deadline = 3.0
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        dr.restore_tensors(index, deadline=deadline)
    elapsed = time.monotonic() - t0
    print(f"{faulty.name}: black-holed shard, deadline {deadline} s, failed after {elapsed:.2f} s")
    assert elapsed <= deadline * 1.1 + SLACK, elapsed
    msg = str(info.value)
    assert "data-00001-of-00004" in msg and "bytes [" in msg and "tensors" in msg, msg
    assert isinstance(info.value, StorageError) and isinstance(info.value, TimeoutError)


def test_stalled_endpoint_fails_within_deadline_when_opening(faulty):
    url = faulty.url("tf1_sharded")
    faulty.proxy.add_rule("stall")  # every request: accepted, never answered
    deadline = 2.0
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        dr.restore_tensors(url, storage_options=faulty.options, deadline=deadline)
    elapsed = time.monotonic() - t0
    print(f"{faulty.name}: stalled endpoint, deadline {deadline} s, failed after {elapsed:.2f} s")
    assert elapsed <= deadline * 1.1 + SLACK, elapsed
    assert url in str(info.value)


def test_stalled_request_is_abandoned_at_timeout_and_retried(faulty):
    url = faulty.url("tf1_sharded")
    storage = CountingStorage(faulty.storage(retry=RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)))
    index = dr.open_checkpoint(url, storage=storage, timeout=0.5)
    dr.restore_tensors(index)  # the index learns its data files' sizes: what stalls now is the range read
    faulty.proxy.clear()
    faulty.proxy.add_rule("stall", match="data-00002")
    storage.reset()
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        dr.restore_tensors(index)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    print(f"{faulty.name}: stalled shard, timeout 0.5 s x 3 attempts, failed after {elapsed:.2f} s")
    assert not isinstance(info.value, DeadlineExceededError)
    assert "data-00002-of-00004" in msg and "after 3 attempt(s)" in msg, msg
    # 3 attempts of 0.5 s each (the backend's read timeout), nothing retried inside the backend
    assert 1.4 <= elapsed <= 3 * 0.5 * 1.1 + SLACK, elapsed
    ranges = {r for r in storage.data_requests("data-00002")}
    assert faulty.proxy.requests("data-00002") == 3 * len(ranges)


def test_one_attempt_and_a_stall_does_not_hang(faulty):
    # the case: RetryPolicy(attempts=1) against a server that never answers
    url = faulty.url("tf1_sharded")
    faulty.proxy.add_rule("stall")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="after 1 attempt"):
        dr.open_checkpoint(url, storage=faulty.storage(retry=RetryPolicy(attempts=1)), timeout=0.5)
    assert time.monotonic() - t0 <= 0.5 * 1.1 + SLACK


def test_concurrent_reads_do_not_wait_for_a_pooled_connection(faulty):
    """24 reads at once reach the store at once: none queues behind a client's connection pool
    (botocore keeps 10 connections unless told otherwise)."""
    url = faulty.url("tf1_sharded")
    data = f"{url}/model.ckpt-7.data-00000-of-00004"
    storage = faulty.storage(retry=RetryPolicy(attempts=1), timeout=3.0)
    storage.size(data)  # the client, its session and first connection are made before the stall
    faulty.proxy.add_rule("stall", match="data-00000")
    n = 24

    def read(i):
        try:
            storage.readinto(data, i, bytearray(1))
        except StorageError:  # every one stalls until its timeout
            pass

    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        reached = wait_until(lambda: faulty.proxy.requests("data-00000") >= n + 1, timeout=2.5)
        seen = faulty.proxy.requests("data-00000") - 1
    finally:
        for t in threads:
            t.join()
    assert reached, f"{faulty.name}: only {seen} of {n} concurrent reads reached the store"


def test_an_index_is_read_in_one_request(faulty):
    """Opening a checkpoint asks its index once, with one GET: no size request first (s3fs
    asks one to split a whole-object read over several GETs)."""
    url = faulty.url("tf1_sharded")
    dr.open_checkpoint(f"{url}/model.ckpt-7", storage=faulty.storage())
    asked = [(m, p) for m, p, _ in faulty.proxy.log if "model.ckpt-7.index" in p]
    assert [m for m, _ in asked] == ["GET"], asked


# -- permanent errors: one attempt --------------------------------------------------------------


def test_access_denied_fails_at_once(faulty):
    url = faulty.url("tf1_sharded")
    index = dr.open_checkpoint(url, storage=faulty.storage())
    faulty.proxy.clear()
    faulty.proxy.add_rule("403", match="data-00003")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        dr.restore_tensors(index)
    assert time.monotonic() - t0 < AT_ONCE
    assert "data-00003-of-00004" in str(info.value) and "after 1 attempt(s)" in str(info.value)
    assert faulty.proxy.faults("403") == faulty.proxy.requests("data-00003")  # never repeated


def test_missing_key_fails_at_once(faulty):
    url = faulty.store.upload(FIXTURES_DIR / "tf1_sharded", exclude=["model.ckpt-7.data-00001-of-00004"])
    storage = CountingStorage(faulty.storage())
    index = dr.open_checkpoint(url, storage=storage)
    storage.reset()
    t0 = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match="data-00001"):
        dr.restore_tensors(index)
    assert time.monotonic() - t0 < AT_ONCE
    assert storage.attempts + storage.meta_attempts == sum(storage.calls.values())  # one attempt each


def test_missing_bucket_fails_at_once(faulty):
    scheme = faulty.store.scheme
    storage = CountingStorage(faulty.storage())
    t0 = time.monotonic()
    with pytest.raises(CheckpointNotFoundError):
        dr.open_checkpoint(f"{scheme}://distrestore-no-such-bucket-x/ckpt/model", storage=storage)
    assert time.monotonic() - t0 < AT_ONCE
    assert storage.attempts + storage.meta_attempts == sum(storage.calls.values())  # one attempt each


def test_no_credentials_fails_at_once(s3_server, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = s3_server.upload_fixture(FIXTURES_DIR / "tf1_sharded")
    storage = CountingStorage(Storage.for_url(url, {"endpoint_url": s3_server.endpoint}, retry=PATIENT))
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="(?i)credentials"):
        dr.open_checkpoint(f"{url}/model.ckpt-7", storage=storage)
    assert storage.attempts == 1
    assert time.monotonic() - t0 < AT_ONCE


@pytest.mark.parametrize("scheme,options", [("s3", {"key": "k", "secret": "s"}), ("gs", {"token": "anon"})])
def test_name_resolution_failure_fails_at_once(scheme, options):
    options = {**options, "endpoint_url": "http://distrestore-no-such-host.invalid:9"}
    storage = CountingStorage(Storage.for_url(f"{scheme}://b", options, retry=PATIENT))
    t0 = time.monotonic()
    with pytest.raises(StorageError):
        storage.read(f"{scheme}://b/ckpt.index")
    assert storage.attempts == 1
    assert time.monotonic() - t0 < AT_ONCE


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme,options", [("s3", {"key": "k", "secret": "s"}), ("gs", {"token": "anon"})])
def test_refused_connection_is_retried_only_within_the_window(scheme, options):
    window = 1.0
    options = {**options, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
    policy = RetryPolicy(attempts=50, initial_backoff=0.05, max_backoff=0.1, refused_window=window)
    storage = CountingStorage(Storage.for_url(f"{scheme}://b", options, retry=policy))
    with pytest.raises(StorageError):  # once untimed: imports and the client's setup
        storage.read(f"{scheme}://b/warm-up")
    storage.reset()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="(?i)refused|connect"):
        storage.read(f"{scheme}://b/ckpt.index")
    elapsed = time.monotonic() - t0
    print(f"{scheme}: refused endpoint, window {window} s: failed after {elapsed:.2f} s, {storage.attempts} attempts")
    assert window <= elapsed <= window * 1.1 + SLACK
    assert 2 <= storage.attempts < 50


def test_endpoint_that_restarts_within_the_window_is_waited_for(faulty):
    # the endpoint refuses connections for 0.5 s (a restarting server), then answers
    url = faulty.url("tf1_sharded")
    port = _closed_port()
    options = {**faulty.store.storage_options, "endpoint_url": f"http://127.0.0.1:{port}"}
    later = FaultProxy(faulty.store.endpoint, faulty.name, port=port)
    timer = threading.Timer(0.5, later.start)
    timer.start()
    try:
        policy = RetryPolicy(attempts=50, initial_backoff=0.05, max_backoff=0.1, refused_window=5.0)
        storage = Storage.for_url(url, options, retry=policy)
        values = dr.restore_tensors(dr.open_checkpoint(url, storage=storage))
        check_values(values, expected("tf1_sharded")["tensors"], faulty.name)
    finally:
        timer.join()
        later.stop()


# -- the thread executor keeps the deadline even when a read does not ---------------------------


def test_thread_executor_abandons_reads_past_the_deadline(fixtures_dir):
    # a local read cannot be cut (no time limit on a disk read): the executor stops waiting
    storage = LatencyStorage(latency=0.0)
    index = dr.open_checkpoint(fixtures_dir / "tf1_sharded" / "model.ckpt-7", storage=storage)
    storage.latency = 5.0  # every data read now takes 5 s
    deadline = 1.0
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        dr.restore_tensors(index, deadline=deadline)
    elapsed = time.monotonic() - t0
    assert elapsed <= deadline * 1.1 + SLACK
    assert "outstanding" in str(info.value) and "model.ckpt-7.data-" in str(info.value)
    names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("distrestore-read") for n in names)  # left behind, finishing on their own
    deadline_end = time.monotonic() + 10
    while any(t.name.startswith("distrestore-read") for t in threading.enumerate()):
        assert time.monotonic() < deadline_end, "abandoned read threads never finished"
        time.sleep(0.1)
