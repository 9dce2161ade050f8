"""Timeouts, deadlines, error classes and the filesystem cache of the storage layer.

* ``timeout=``/``deadline=`` reach every public reading entry point, and the backend's own
  options (botocore, gcsfs, aiohttp) are derived from ``timeout`` unless the user set them;
* the backends retry nothing themselves (one retry loop: ``storage/base.py``);
* which failures are permanent, transient, or a refused connection;
* fsspec's instance cache, bounded: rotating credentials do not pile up filesystems;
* 100 consecutive S3 restores: flat descriptors and threads, bounded memory.
"""

from __future__ import annotations

import errno
import gc
import inspect
import socket
import threading
import time
import weakref

import psutil
import pytest

import distrestore as dr
from distrestore.errors import DeadlineExceededError, ShortReadError, StorageError
from distrestore.storage import PERMANENT, REFUSED, TRANSIENT, RetryPolicy, Storage, failure_kind
from distrestore.storage import fsspec as fsspec_backend
from distrestore.storage.fsspec import MAX_FILESYSTEMS, backend_options, cached_filesystems, filesystem
from distrestore.storage.wrappers import CountingStorage, FlakyStorage, StorageWrapper

ENTRY_POINTS = [
    dr.restore_tensors,
    dr.iter_restore_tensors,
    dr.fetch,
    dr.iter_fetch,
    dr.load_checkpoint,
    dr.open_checkpoint,
    dr.list_variables,
    dr.load_variable,
    dr.latest_checkpoint,
    dr.get_checkpoint_state,
    dr.CheckpointReader,
    dr.Checkpoint.restore,
    dr.Checkpoint.read,
    dr.read_object_graph,
    dr.load_object_tree,
    dr.init_from_checkpoint,
    dr.VariableStore.checkpoint,
    dr.VariableStore.initialize,
]


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_every_reading_entry_point_takes_timeout_and_deadline(fn):
    params = inspect.signature(fn).parameters
    for name in ("timeout", "deadline"):
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default is None


@pytest.fixture
def tf1(fixtures_dir):
    return fixtures_dir / "tf1_sharded", fixtures_dir / "tf1_sharded" / "model.ckpt-7"


def test_a_passed_deadline_fails_each_entry_point_before_any_read(tf1):
    directory, prefix = tf1
    index = dr.open_checkpoint(prefix)
    calls = {
        "restore_tensors": lambda: dr.restore_tensors(prefix, deadline=0),
        "iter_restore_tensors": lambda: list(dr.iter_restore_tensors(prefix, deadline=0)),
        "fetch": lambda: dr.fetch([dr.TensorRequest(index, "big/part5")], deadline=0),
        "iter_fetch": lambda: list(dr.iter_fetch([dr.TensorRequest(index, "big/part5")], deadline=0)),
        "load_checkpoint": lambda: dr.load_checkpoint(directory, deadline=0),
        "open_checkpoint": lambda: dr.open_checkpoint(prefix, deadline=0),
        "list_variables": lambda: dr.list_variables(prefix, deadline=0),
        "load_variable": lambda: dr.load_variable(prefix, "big/part5", deadline=0),
        "latest_checkpoint": lambda: dr.latest_checkpoint(directory, deadline=0),
        "get_checkpoint_state": lambda: dr.get_checkpoint_state(directory, deadline=0),
        "reader.get_tensor": lambda: dr.CheckpointReader(index, deadline=0).get_tensor("big/part5"),
        "reader.get_slice": lambda: dr.CheckpointReader(index, deadline=0).get_slice("big/part5", (slice(0, 2),)),
    }
    for what, call in calls.items():
        with pytest.raises(DeadlineExceededError, match="deadline"):
            call()
            pytest.fail(f"{what} read past its deadline")
    # and with time to spare, the same calls work
    assert dr.load_checkpoint(directory, timeout=5, deadline=30).get_tensor("big/part5").shape
    assert dr.latest_checkpoint(directory, deadline=30) == str(prefix)


def test_reader_applies_its_deadline_to_each_call(tf1):
    _, prefix = tf1
    storage = CountingStorage()
    reader = dr.CheckpointReader(dr.open_checkpoint(prefix, storage=storage), timeout=3, deadline=30)
    for _ in range(3):  # each call its own 30 s: none fails for the time the others took
        assert reader.get_tensor("big/part5").shape == (100, 8)
    assert storage.calls["readinto"] >= 3


def test_storage_deadline_is_checked_before_each_attempt(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    flaky = FlakyStorage(
        Storage(retry=RetryPolicy(attempts=100, initial_backoff=0.05, max_backoff=0.05)), failures=10**6
    )
    late = flaky.limited(deadline_at=time.time() + 0.3)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        late.readinto(str(tmp_path / "f"), 10, bytearray(20), what="tensor 'w'")
    assert time.monotonic() - t0 < 0.3 + 1.0
    assert "[10, 30)" in str(info.value) and "tensor 'w'" in str(info.value)
    assert 2 <= flaky.attempts < 100  # the limited copy counts into the same counters
    assert flaky.limited() is flaky and late.deadline_at is not None and flaky.deadline_at is None


# -- backend options -------------------------------------------------------------------------------


def test_s3_options_from_timeout():
    out = backend_options("s3", {"key": "k"}, 7.0)
    assert out["config_kwargs"] == {
        "connect_timeout": 7.0,
        "read_timeout": 7.0,
        "retries": {"total_max_attempts": 1},
        "max_pool_connections": fsspec_backend.S3_CONNECTIONS,
    }
    assert out["key"] == "k"


def test_user_options_win_over_derived_ones():
    mine = {"config_kwargs": {"read_timeout": 99, "retries": {"max_attempts": 3}, "max_pool_connections": 5}}
    out = backend_options("s3", mine, 7.0)
    assert out["config_kwargs"] == {**mine["config_kwargs"], "connect_timeout": 7.0}
    assert mine["config_kwargs"] == {"read_timeout": 99, "retries": {"max_attempts": 3}, "max_pool_connections": 5}
    assert backend_options("gs", {"requests_timeout": 5}, 7.0)["requests_timeout"] == 5


def test_gcs_and_http_options_from_timeout():
    import aiohttp

    gcs = backend_options("gs", {"token": "anon"}, 4.0)["requests_timeout"]
    assert isinstance(gcs, aiohttp.ClientTimeout) and (gcs.sock_connect, gcs.sock_read, gcs.total) == (4.0, 4.0, None)
    http = backend_options("https", {}, 4.0)["client_kwargs"]["timeout"]
    assert (http.sock_connect, http.sock_read) == (4.0, 4.0)
    default = backend_options("gs", {}, None)["requests_timeout"]
    assert default.sock_read == fsspec_backend.DEFAULT_TIMEOUT
    assert backend_options("memory", {"x": 1}, 4.0) == {"x": 1}


def test_backends_retry_nothing_themselves():
    s3 = filesystem("s3", backend_options("s3", {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9"}, 1))
    assert s3.retries == 1
    gcs = filesystem("gs", backend_options("gs", {"token": "anon", "endpoint_url": "http://127.0.0.1:9"}, 1))
    import gcsfs

    assert type(gcs)._request is gcsfs.GCSFileSystem._request.__wrapped__
    assert isinstance(gcs, gcsfs.GCSFileSystem) and isinstance(s3, __import__("s3fs").S3FileSystem)


# -- the filesystem cache ----------------------------------------------------------------------------


def test_same_options_share_a_filesystem_and_the_cache_is_bounded():
    base = {"key": "k", "endpoint_url": "http://127.0.0.1:9"}
    a = Storage.for_url("s3://b", {**base, "secret": "s0"})
    assert a.fs is Storage.for_url("s3://b", {**base, "secret": "s0"}).fs
    first = weakref.ref(a.fs)
    del a
    for i in range(1, 3 * MAX_FILESYSTEMS):  # rotating credentials: a new set of options each time
        Storage.for_url("s3://b", {**base, "secret": f"s{i}"}).fs  # noqa: B018
        assert cached_filesystems() <= MAX_FILESYSTEMS
    gc.collect()
    assert first() is None  # evicted, and freed with its credentials once nothing used it


def test_a_storage_keeps_its_filesystem_after_eviction():
    s = Storage.for_url("s3://b", {"key": "k", "secret": "keep", "endpoint_url": "http://127.0.0.1:9"})
    fs = s.fs
    for i in range(2 * MAX_FILESYSTEMS):
        Storage.for_url("s3://b", {"key": "k", "secret": f"other{i}", "endpoint_url": "http://127.0.0.1:9"}).fs  # noqa: B018
    assert s.fs is fs


# -- which failures are retried ------------------------------------------------------------------------


class NoCredentialsError(Exception):
    """Named like botocore's: the name is what is looked at (botocore may be absent)."""


class HTTPClientError(Exception):
    """botocore keeps the error it wraps in ``kwargs["error"]``."""

    def __init__(self, error):
        super().__init__(f"An HTTP Client raised an unhandled exception: {error}")
        self.kwargs = {"error": error}


class HttpError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 (the context is the point)
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    "exc,kind",
    [
        (TimeoutError("timed out"), TRANSIENT),
        (ConnectionResetError("reset"), TRANSIENT),
        (ShortReadError("got 1 of 2"), TRANSIENT),
        (HttpError(503, "backend error"), TRANSIENT),
        (HttpError(429, "rate"), TRANSIENT),
        (HttpError(401, "Invalid Credentials, 401"), TRANSIENT),  # an expired token, refreshed
        (HttpError(403, "forbidden"), PERMANENT),
        (HttpError(404, "no"), PERMANENT),
        (NoCredentialsError("Unable to locate credentials"), PERMANENT),
        (socket.gaierror(-2, "Name or service not known"), PERMANENT),
        (OSError(errno.EHOSTUNREACH, "No route to host"), PERMANENT),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), PERMANENT),
        (ConnectionRefusedError(111, "Connection refused"), REFUSED),
        (_wrapped(ConnectionRefusedError(111, "refused"), OSError("Could not connect to the endpoint URL")), REFUSED),
        (_wrapped(socket.gaierror(-2, "unknown"), OSError("Could not connect to the endpoint URL")), PERMANENT),
        (HTTPClientError(ValueError("Cannot combine AUTHORIZATION header with AUTH argument")), PERMANENT),
        (OSError("An error occurred (AccessDenied) when calling GetObject"), PERMANENT),
        (OSError("An error occurred (ExpiredToken)"), PERMANENT),
        (OSError(errno.EIO, "An error occurred (InternalError)"), TRANSIENT),
        # an error raised while handling an unrelated one is not classified by that one
        (_wrapped(ValueError("a parse detail"), OSError(errno.EIO, "payload not completed")), TRANSIENT),
        (_wrapped(KeyError("x"), TimeoutError("read timed out")), TRANSIENT),
        (OSError(errno.ENOSPC, "No space left on device"), PERMANENT),
    ],
)
def test_failure_kind(exc, kind):
    assert failure_kind(exc) == kind


def test_aiohttp_parser_status_is_not_an_http_answer():
    aiohttp = pytest.importorskip("aiohttp")
    from yarl import URL

    info = aiohttp.RequestInfo(URL("http://h/x"), "GET", {}, URL("http://h/x"))
    err = aiohttp.ClientResponseError(info, (), status=400, message="Bad status line")
    assert failure_kind(err) == TRANSIENT  # a garbled answer, not the server's 400


# -- 100 restores ---------------------------------------------------------------------------------------


def test_100_consecutive_s3_restores_hold_descriptors_threads_and_memory(s3_server, fixtures_dir):
    url = s3_server.upload_fixture(fixtures_dir / "tf1_sharded")
    options = s3_server.storage_options
    proc = psutil.Process()

    def restore():
        values = dr.restore_tensors(f"{url}/model.ckpt-7", storage_options=options)
        assert len(values) == 13

    for _ in range(10):  # warm-up: the filesystem, connection pools, allocator arenas
        restore()
    gc.collect()
    fds, threads, rss = proc.num_fds(), threading.active_count(), proc.memory_info().rss
    peak_fds, peak_threads = fds, threads
    for _ in range(100):
        restore()
        peak_fds = max(peak_fds, proc.num_fds())
        peak_threads = max(peak_threads, threading.active_count())
    gc.collect()
    growth = (proc.memory_info().rss - rss) / 2**20
    assert proc.num_fds() <= fds + 2 and peak_fds <= fds + 40, (fds, proc.num_fds(), peak_fds)
    assert threading.active_count() <= threads and peak_threads <= threads + 40, (threads, peak_threads)
    assert growth <= 20, f"RSS grew {growth:.1f} MB over 100 restores"


# -- writes --------------------------------------------------------------------------------------------


class FailingWrites(StorageWrapper):
    """Fails the first ``n`` write attempts with ``error``."""

    def __init__(self, inner, n, error):
        super().__init__(inner)
        self.n, self.error, self.tries = n, error, 0

    def write_attempt(self, url, data, limit):
        self.tries += 1
        if self.tries <= self.n:
            raise self.error
        return super().write_attempt(url, data, limit)


def test_idempotent_writes_are_retried_and_a_full_disk_is_not(tmp_path):
    fast = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)
    s = FailingWrites(Storage(retry=fast), 2, ConnectionResetError("reset"))
    s.write_bytes(str(tmp_path / "a"), b"abc")
    assert (tmp_path / "a").read_bytes() == b"abc" and s.tries == 3
    full = FailingWrites(Storage(retry=fast), 10, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError, match="writing .* after 1 attempt"):
        full.write_bytes(str(tmp_path / "b"), b"abc")
    assert full.tries == 1
