"""Storage conformance: one suite over local files, memory://, S3 (moto) and GCS (fake-gcs-server).

Every backend must read exact bytes into one or many caller buffers, raise the package's errors
(``StorageError`` for bad ranges, ``CheckpointNotFoundError`` for missing files) naming the file
and range, answer metadata calls, survive pickling, and retry transient failures (and only
those) per the policy. Retries are driven through ``FlakyStorage``, which fails the transport
that the real retry loop wraps (``distrestore.storage.wrappers``).
"""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pytest
from checks import read_range

from distrestore.errors import CheckpointNotFoundError, DistRestoreError, StorageError
from distrestore.storage import RetryPolicy, ShortReadError, Storage, is_transient, join
from distrestore.storage.wrappers import CountingStorage, FlakyStorage, LatencyStorage, http_error

BACKENDS = ("local", "memory", "s3", "gcs")
STORE_FIXTURES = {"memory": "memory_store", "s3": "s3_server", "gcs": "gcs_server"}
FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.005, deadline=10.0)

BLOB_SIZE = 100_003  # odd, so ranges are never aligned by accident
BLOB = np.random.default_rng(1234).integers(0, 256, BLOB_SIZE, dtype=np.uint8).tobytes()
SMALL = b"0123456789abcdef"
TREE = {
    "blob.bin": BLOB,
    "small.bin": SMALL,
    "empty.bin": b"",
    "dir/a.txt": b"a",
    "dir/b.txt": b"bb",
    "dir/sub/c.bin": b"ccc",
}


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage-tree")
    for rel, data in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


class Backend:
    """A backend under test: ``storage`` (fast retry policy), ``base`` URL holding ``TREE``."""

    def __init__(self, name: str, base: str, storage_options: dict):
        self.name = name
        self.base = base
        self.storage_options = storage_options
        self.storage = Storage.for_url(base, storage_options, retry=FAST)

    @property
    def remote(self) -> bool:
        return self.name != "local"

    def url(self, rel: str) -> str:
        return join(self.base, rel)

    def make(self, cls, retry=FAST, **kw):
        """A wrapper storage of class ``cls`` around this backend (fast retry policy by default;
        the same options give the same filesystem instance, from fsspec's cache)."""
        return cls(Storage.for_url(self.base, self.storage_options, retry=retry), **kw)

    def __repr__(self):
        return f"Backend({self.name}, {self.base})"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, local_tree) -> Backend:
    if request.param == "local":
        return Backend("local", str(local_tree), {})
    store = request.getfixturevalue(STORE_FIXTURES[request.param])
    return Backend(request.param, store.upload_fixture(local_tree), store.storage_options)


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("start,length", [(0, BLOB_SIZE), (0, 1), (1, 4096), (65_537, 12_345), (BLOB_SIZE - 7, 7)])
def test_readinto_one_buffer(backend, start, length):
    buf = bytearray(length)
    backend.storage.readinto(backend.url("blob.bin"), start, buf)
    assert bytes(buf) == BLOB[start : start + length]


def test_readinto_numpy_and_memoryview_buffers(backend):
    arr = np.zeros(1000, dtype=np.float32)  # a typed array is filled byte for byte
    backend.storage.readinto(backend.url("blob.bin"), 10, arr)
    assert arr.tobytes() == BLOB[10:4010]
    big = bytearray(200)
    backend.storage.readinto(backend.url("blob.bin"), 500, memoryview(big)[50:150])
    assert big[:50] == bytes(50) and big[150:] == bytes(50)
    assert bytes(big[50:150]) == BLOB[500:600]


def test_readinto_consecutive_buffers(backend):
    sizes = [1, 0, 4096, 3, 70_000, 17]
    bufs = [bytearray(n) for n in sizes]
    bufs[2] = np.zeros(1024, dtype=np.int32)  # 4096 bytes as a numpy array
    start = 123
    backend.storage.readinto(backend.url("blob.bin"), start, bufs)
    got = b"".join(bytes(memoryview(b).cast("B")) for b in bufs)
    assert got == BLOB[start : start + sum(sizes)]


def test_readinto_more_buffers_than_iov_max(backend):
    # local preadv takes at most IOV_MAX (1024) buffers per call
    bufs = [bytearray(7) for _ in range(3000)]
    backend.storage.readinto(backend.url("blob.bin"), 99, bufs)
    assert b"".join(bufs) == BLOB[99 : 99 + 21_000]


def test_read_whole_file_and_ranges(backend):
    s = backend.storage
    assert s.read(backend.url("blob.bin")) == BLOB
    assert s.read(backend.url("small.bin")) == SMALL
    assert s.read(backend.url("small.bin"), 3) == SMALL[3:]
    assert s.read(backend.url("small.bin"), 3, 9) == SMALL[3:9]
    assert s.read(backend.url("empty.bin")) == b""
    assert s.read(backend.url("dir/sub/c.bin")) == b"ccc"


def test_ranges_at_file_end(backend):
    s = backend.storage
    url = backend.url("blob.bin")
    assert s.read(url, BLOB_SIZE - 1, BLOB_SIZE) == BLOB[-1:]
    assert s.read(url, BLOB_SIZE - 1000) == BLOB[-1000:]
    bufs = [bytearray(600), bytearray(400)]
    s.readinto(url, BLOB_SIZE - 1000, bufs)
    assert bytes(bufs[0] + bufs[1]) == BLOB[-1000:]


def test_zero_length_read(backend):
    # s3fs cat_file(start=n, end=n) sends no Range and returns the whole object
    s = backend.storage
    s.readinto(backend.url("small.bin"), 5, bytearray(0))
    s.readinto(backend.url("small.bin"), 5, [])
    assert s.read(backend.url("small.bin"), 5, 5) == b""


@pytest.mark.parametrize(
    "start,length",
    [(BLOB_SIZE - 10, 20), (BLOB_SIZE, 1), (BLOB_SIZE + 100, 50)],
    ids=["straddling", "at-end", "beyond"],
)
def test_read_past_end_is_a_storage_error(backend, start, length):
    url = backend.url("blob.bin")
    with pytest.raises(StorageError) as info:
        backend.storage.readinto(url, start, bytearray(length))
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, DistRestoreError)
    assert not isinstance(err, FileNotFoundError)
    assert url in str(err)
    assert f"[{start}, {start + length})" in str(err)
    with pytest.raises(StorageError, match=r"\[16, 20\)"):
        backend.storage.readinto(backend.url("small.bin"), 16, [bytearray(2), bytearray(2)])


@pytest.mark.parametrize("start,length", [(BLOB_SIZE - 10, 20), (BLOB_SIZE + 100, 50)], ids=["straddling", "beyond"])
def test_read_past_end_is_not_retried(backend, start, length):
    # A range past the end of a file is permanent (a truncated data file): retrying it only
    # delays the error (seconds with the default policy).
    s = backend.make(CountingStorage)
    with pytest.raises(StorageError):
        s.readinto(backend.url("blob.bin"), start, bytearray(length))
    assert s.attempts == 1


def test_missing_file_is_checkpoint_not_found(backend):
    s = backend.make(CountingStorage)
    url = backend.url("dir/nope.bin")
    for call in (lambda: s.readinto(url, 0, bytearray(4)), lambda: s.read(url), lambda: s.size(url)):
        with pytest.raises(CheckpointNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DistRestoreError)
        assert url in str(info.value)
    # one attempt each, never retried (size is metadata)
    assert s.attempts == 2 and s.meta_attempts == 1


def test_missing_bucket_or_directory(backend):
    if backend.name == "local":
        url = os.path.join(backend.base, "no-such-dir", "x.bin")
    else:
        url = f"{backend.base.split('://')[0]}://no-such-bucket-distrestore/x.bin"
    with pytest.raises(FileNotFoundError):
        backend.storage.readinto(url, 0, bytearray(4))
    assert not backend.storage.exists(url)


# -- metadata -----------------------------------------------------------------------------------


def test_size_exists_isdir(backend):
    s = backend.storage
    assert s.size(backend.url("blob.bin")) == BLOB_SIZE
    assert s.size(backend.url("empty.bin")) == 0
    assert s.exists(backend.url("blob.bin"))
    assert s.exists(backend.url("empty.bin"))
    assert not s.exists(backend.url("nope.bin"))
    assert s.isdir(backend.url("dir"))
    assert s.isdir(backend.url("dir/sub"))
    assert s.isdir(backend.base)
    assert not s.isdir(backend.url("blob.bin"))
    assert not s.isdir(backend.url("nope"))


def test_glob(backend):
    s = backend.storage
    found = s.glob(backend.url("dir/*.txt"))
    assert [f.rsplit("/", 1)[-1] for f in found] == ["a.txt", "b.txt"]
    assert [s.read(f) for f in found] == [b"a", b"bb"]  # what glob returns can be read back
    if backend.name in ("s3", "gcs"):  # (memory:// answers "memory:///bucket/...": same files)
        assert found == [backend.url("dir/a.txt"), backend.url("dir/b.txt")]
    assert [f.rsplit("/", 1)[-1] for f in s.glob(backend.url("*.bin"))] == ["blob.bin", "empty.bin", "small.bin"]
    assert s.glob(backend.url("nothing-*")) == []


def test_for_url_protocols():
    assert Storage.for_url("/tmp/x").protocol == "file"
    assert Storage.for_url("relative/x").local
    assert Storage.for_url("file:///tmp/x").local
    assert Storage.for_url("s3://b/k", {"key": "k"}).protocol == "s3"
    assert Storage.for_url("gs://b/k").protocol == "gs"
    assert Storage.for_url("memory://b/k").protocol == "memory"
    opts = {"key": "k"}
    s = Storage.for_url("s3://b/k", opts)
    opts["key"] = "changed"
    assert s.storage_options == {"key": "k"}  # copied, not aliased


def test_file_url(local_tree):
    s = Storage.for_url(f"file://{local_tree}")
    url = f"file://{local_tree}/small.bin"
    assert s.exists(url) and s.size(url) == len(SMALL)
    assert s.read(url, 2, 6) == SMALL[2:6]


def test_unknown_protocol_says_what_to_install():
    s = Storage.for_url("nosuchproto://b/k")
    with pytest.raises(StorageError, match="nosuchproto"):
        s.read("nosuchproto://b/k")


# -- concurrency and pickling -------------------------------------------------------------------


def test_concurrent_reads_share_one_lazily_made_filesystem(backend):
    s = Storage.for_url(backend.base, backend.storage_options, retry=FAST)  # fs not made yet
    url = backend.url("blob.bin")
    errors, results = [], {}
    barrier = threading.Barrier(12)

    def work(i):
        try:
            barrier.wait()
            buf = bytearray(997)
            s.readinto(url, i * 5000, buf)
            results[i] = bytes(buf)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[i] == BLOB[i * 5000 : i * 5000 + 997] for i in range(12))


def test_storage_pickles_and_works_after_unpickling(backend):
    s = backend.storage
    url = backend.url("blob.bin")
    assert s.read(url, 0, 10) == BLOB[:10]  # makes the filesystem
    data = pickle.dumps(s)
    assert b"FileSystem" not in data  # no filesystem instance travels
    t = pickle.loads(data)
    assert type(t) is type(s) and t == s
    assert (t.protocol, t.storage_options, t.retry) == (s.protocol, s.storage_options, s.retry)
    assert t.read(url, 100, 200) == BLOB[100:200]
    if backend.remote:
        # within one process, one filesystem per (protocol, options): fsspec's instance cache
        # (keyed by pid, so other processes make their own)
        assert t.fs is s.fs


def test_storage_works_in_another_process(backend):
    if backend.name == "memory":
        pytest.skip("memory:// lives in this process only")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    url = backend.url("blob.bin")
    storages = [backend.storage, backend.make(CountingStorage)]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = [pool.submit(read_range, s, url, 777, 7777).result(timeout=120) for s in storages]
    backend_type = type(backend.storage).__name__
    assert results == [(BLOB[777:7777], backend_type), (BLOB[777:7777], "CountingStorage")]


@pytest.mark.parametrize(
    "cls,kw",
    [(CountingStorage, {}), (LatencyStorage, {"latency": 0.001}), (FlakyStorage, {"failures": 1, "kinds": ("503",)})],
)
def test_wrappers_pickle(backend, cls, kw):
    s = backend.make(cls, **kw)
    url = backend.url("small.bin")
    assert s.read(url) == SMALL
    assert s.calls["read"] == 1 and s.attempts >= 1
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is cls
    assert t == s  # same dataclass fields
    assert t.attempts == 0 and not t.requests  # counters are per process
    assert t.read(url, 2, 5) == SMALL[2:5]
    assert t.requests == [(url, 2, 5)]


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kinds",
    [("timeout",), ("503",), ("throttle",), ("reset",), ("short",), ("timeout", "503", "short")],
    ids=lambda k: "+".join(k),
)
def test_transient_failures_are_retried(backend, kinds):
    s = backend.make(
        FlakyStorage, failures=3, kinds=kinds, retry=RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)
    )
    url = backend.url("blob.bin")
    bufs = [bytearray(1000), np.zeros(250, np.float32), bytearray(3)]
    s.readinto(url, 42, bufs)
    got = b"".join(bytes(memoryview(b).cast("B")) for b in bufs)
    assert got == BLOB[42 : 42 + 2003]  # a partial fill of a failed attempt was overwritten
    assert s.range_attempts == {(url, 42, 2045): 4}
    assert s.injected == 3 and s.attempts == 4
    assert s.calls["readinto"] == 1


def test_retry_is_per_range(backend):
    s = backend.make(FlakyStorage, failures=1)
    url = backend.url("blob.bin")
    for start in (0, 10, 20):
        assert bytes(s.read(url, start, start + 5)) == BLOB[start : start + 5]
    assert set(s.range_attempts.values()) == {2}
    assert s.injected == 3


def test_gives_up_after_the_attempts(backend):
    s = backend.make(
        FlakyStorage,
        failures=100,
        kinds=("503",),
        retry=RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002),
    )
    url = backend.url("blob.bin")
    with pytest.raises(StorageError) as info:
        s.readinto(url, 1000, bytearray(24), what="tensor 'w'")
    msg = str(info.value)
    assert url in msg and "[1000, 1024)" in msg and "tensor 'w'" in msg
    assert "3 attempt(s)" in msg and "503" in msg
    assert getattr(info.value.__cause__, "code", None) == 503
    assert s.range_attempts == {(url, 1000, 1024): 3}


def test_gives_up_at_the_deadline(backend):
    s = backend.make(
        FlakyStorage,
        failures=10**6,
        kinds=("timeout",),
        # 1 s: instant failures 20 ms apart make ~50 attempts, and a loaded machine still makes 2
        retry=RetryPolicy(attempts=10**6, initial_backoff=0.02, max_backoff=0.02, deadline=1.0),
    )
    url = backend.url("blob.bin")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        s.readinto(url, 0, bytearray(8))
    elapsed = time.monotonic() - t0
    assert url in str(info.value) and "[0, 8)" in str(info.value)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert 2 <= s.attempts < 1000
    assert 0.95 <= elapsed < 4.0


@pytest.mark.parametrize(
    "kind,error", [("missing", CheckpointNotFoundError), ("denied", StorageError), ("404", StorageError)]
)
def test_permanent_errors_are_not_retried(backend, kind, error):
    s = backend.make(
        FlakyStorage, failures=5, kinds=(kind,), retry=RetryPolicy(attempts=5, initial_backoff=0.001, max_backoff=0.002)
    )
    url = backend.url("blob.bin")
    with pytest.raises(error) as info:
        s.readinto(url, 0, bytearray(8))
    assert url in str(info.value)
    assert s.attempts == 1 and s.injected == 1


def test_real_missing_file_is_not_retried_under_flaky_storage(backend):
    s = backend.make(FlakyStorage, failures=0)
    with pytest.raises(CheckpointNotFoundError):
        s.readinto(backend.url("nope.bin"), 0, bytearray(8))
    assert s.attempts == 1


def test_default_retry_policy_is_bounded():
    p = RetryPolicy()
    assert p.attempts >= 3 and 0 < p.deadline <= 600
    for attempt in range(1, 30):
        assert 0 <= p.backoff(attempt) <= p.max_backoff


@pytest.mark.parametrize(
    "exc,transient",
    [
        (TimeoutError("timed out"), True),
        (ConnectionResetError("reset"), True),
        (http_error(), True),
        (http_error("throttled", code=429), True),
        (http_error("request timeout", code=408), True),
        (http_error("internal", code=500), True),
        (ShortReadError("got 1 of 2 bytes"), True),
        (http_error("forbidden", code=403), False),
        (http_error("not found", code=404), False),
        (FileNotFoundError("gone"), False),
        (PermissionError("no"), False),
        (OSError("An error occurred (NoSuchBucket)"), False),
        (OSError("An error occurred (AccessDenied)"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_wrapper_keeps_protocol_options_and_policy(backend):
    w = CountingStorage(backend.storage)
    assert (w.protocol, w.storage_options, w.retry, w.local) == (
        backend.storage.protocol,
        backend.storage.storage_options,
        backend.storage.retry,
        backend.storage.local,
    )
    assert w.read(backend.url("small.bin")) == SMALL


def test_wrappers_nest_and_retry_once(backend):
    # faults injected by the inner wrapper are retried by the outer one's loop: one retry loop
    inner = FlakyStorage(backend.storage, failures=2, kinds=("503",))
    outer = LatencyStorage(inner, latency=0.001)
    assert outer.read(backend.url("blob.bin"), 5, 50) == BLOB[5:50]
    assert inner.attempts == outer.attempts == 3 and inner.injected == 2
    assert outer.calls["readinto"] == 1 and inner.calls["readinto"] == 0
