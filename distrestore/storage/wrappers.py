"""Storages that wrap another one: count calls and bytes, add latency, inject failures.

Each wrapper is a :class:`~distrestore.storage.Storage` holding an ``inner`` storage, so it goes
wherever ``storage=`` is taken (``open_checkpoint(..., storage=CountingStorage(Storage.for_url(url)))``;
a ``CheckpointIndex`` keeps its storage and ``fetch`` reads data files through it). Public calls
(``readinto``, ``read``, ``size``, ...) run the retry loop of ``base.py`` with the inner storage's
policy; every *attempt* goes through the wrapper (counted, delayed or failed there) to the inner
storage's attempt, so the real retry policy runs on top of what a wrapper injects. Wrappers nest.

They pickle (the inner storage and their parameters travel; counters start again at zero on the
other side: each process counts its own calls). A wrapper made for one call (``limited``) shares
its counters with the one it came from.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from ..errors import ShortReadError
from .base import Storage

__all__ = ["CountingStorage", "FlakyStorage", "LatencyStorage", "StorageWrapper", "http_error"]


class StorageWrapper(Storage):
    """Delegates everything to ``inner``; subclasses override the attempts they change."""

    def __init__(self, inner: Storage):
        self.inner = inner

    protocol = property(lambda self: self.inner.protocol)
    storage_options = property(lambda self: self.inner.storage_options)
    retry = property(lambda self: self.inner.retry)
    timeout = property(lambda self: self.inner.timeout)
    deadline_at = property(lambda self: self.inner.deadline_at)
    local = property(lambda self: self.inner.local)

    def params(self) -> dict:
        """The wrapper's own constructor arguments (besides ``inner``)."""
        return {}

    def settings(self) -> dict:
        return {"inner": self.inner, **self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def limited(self, *, timeout=None, deadline_at=None) -> Storage:
        inner = self.inner.limited(timeout=timeout, deadline_at=deadline_at)
        if inner is self.inner:
            return self
        out = object.__new__(type(self))  # the same wrapper state (its counters) over ``inner``
        out.__dict__.update(self.__dict__)
        out.inner = inner
        return out

    def secrets(self) -> set[str]:
        return self.inner.secrets()

    def __getattr__(self, name):  # backend extras (``fs``) of the inner storage
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def read_attempt(self, url, start, views, limit):
        return self.inner.read_attempt(url, start, views, limit)

    def read_all_attempt(self, url, limit):
        return self.inner.read_all_attempt(url, limit)

    def size_attempt(self, url, limit):
        return self.inner.size_attempt(url, limit)

    def exists_attempt(self, url, limit):
        return self.inner.exists_attempt(url, limit)

    def isdir_attempt(self, url, limit):
        return self.inner.isdir_attempt(url, limit)

    def glob_attempt(self, pattern, limit):
        return self.inner.glob_attempt(pattern, limit)

    def write_attempt(self, url, data, limit):
        return self.inner.write_attempt(url, data, limit)

    def open_write(self, url):
        return self.inner.open_write(url)

    def upload_attempt(self, url, chunks, limit):
        return self.inner.upload_attempt(url, chunks, limit)

    def copy_attempt(self, src, dst, limit):
        return self.inner.copy_attempt(src, dst, limit)

    def makedirs_attempt(self, url, limit):
        return self.inner.makedirs_attempt(url, limit)

    def rename_attempt(self, src, dst, limit):
        return self.inner.rename_attempt(src, dst, limit)

    def remove_attempt(self, url, limit):
        return self.inner.remove_attempt(url, limit)


class _Stats:
    """Counters shared by a counting wrapper and the per-call copies made from it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.calls: Counter = Counter()
        self.requests: list[tuple[str, int, int]] = []
        self.bytes_read = 0
        self.attempts = self.meta_attempts = 0
        self.inflight = self.max_inflight = 0
        self.inflight_bytes = self.max_inflight_bytes = 0
        self.range_attempts: Counter = Counter()
        self.injected = 0


def _stat(name: str):
    return property(lambda self: getattr(self._stats, name), doc=f"see :class:`CountingStorage` ({name})")


class CountingStorage(StorageWrapper):
    """Counts calls, data requests, attempts and bytes; thread-safe.

    Attributes (reset with :meth:`reset`):

    * ``calls``: ``Counter`` of public method names (``readinto``, ``read``, ``size``, ...);
    * ``requests``: every range read (``readinto``) and whole-file read as ``(url, start, end)``,
      in call order;
    * ``bytes_read``: bytes of those reads;
    * ``attempts``: read attempts (one per try of the retry loop, ranges and whole files; delays
      and injected failures apply to these); ``meta_attempts``: tries of metadata calls (``size``,
      ``exists``, ``isdir``, ``glob``);
    * ``inflight`` / ``max_inflight``: ``readinto`` calls running now / at most at once;
    * ``inflight_bytes`` / ``max_inflight_bytes``: the same in bytes.
    """

    calls = _stat("calls")
    requests = _stat("requests")
    bytes_read = _stat("bytes_read")
    attempts = _stat("attempts")
    meta_attempts = _stat("meta_attempts")
    inflight = _stat("inflight")
    max_inflight = _stat("max_inflight")
    inflight_bytes = _stat("inflight_bytes")
    max_inflight_bytes = _stat("max_inflight_bytes")

    def __init__(self, inner: Storage | None = None):
        super().__init__(inner if inner is not None else Storage())
        self._stats = _Stats()

    def reset(self) -> None:
        with self._stats.lock:
            self._stats.reset()

    def data_requests(self, marker: str = ".data-") -> list[tuple[str, int, int]]:
        """``readinto`` calls on files whose URL contains ``marker`` (data shards by default)."""
        with self._stats.lock:
            return [r for r in self._stats.requests if marker in r[0]]

    def bytes_read_of(self, marker: str = ".data-") -> int:
        """Bytes of the ``readinto`` calls on files whose URL contains ``marker``."""
        return sum(end - start for _, start, end in self.data_requests(marker))

    def _count(self, name: str) -> None:
        with self._stats.lock:
            self._stats.calls[name] += 1

    # -- counted public calls ----------------------------------------------------------------

    def readinto(self, url, start, buffers, *, what=""):
        views = buffers if isinstance(buffers, (list, tuple)) else [buffers]
        length = sum(memoryview(b).nbytes for b in views)
        s = self._stats
        with s.lock:
            s.calls["readinto"] += 1
            s.requests.append((url, start, start + length))
            s.bytes_read += length
            s.inflight += 1
            s.inflight_bytes += length
            s.max_inflight = max(s.max_inflight, s.inflight)
            s.max_inflight_bytes = max(s.max_inflight_bytes, s.inflight_bytes)
        try:
            return super().readinto(url, start, buffers, what=what)
        finally:
            with s.lock:
                s.inflight -= 1
                s.inflight_bytes -= length

    def read(self, url, start=0, end=None):
        self._count("read")
        data = super().read(url, start, end)
        if end is None and start == 0:  # a whole-file read (ranges are counted by readinto)
            with self._stats.lock:
                self._stats.requests.append((url, 0, len(data)))
                self._stats.bytes_read += len(data)
        return data

    def size(self, url):
        self._count("size")
        return super().size(url)

    def exists(self, url):
        self._count("exists")
        return super().exists(url)

    def isdir(self, url):
        self._count("isdir")
        return super().isdir(url)

    def glob(self, pattern):
        self._count("glob")
        return super().glob(pattern)

    # -- attempts ------------------------------------------------------------------------------

    def before_attempt(self, url: str, start: int, views) -> None:
        """Run before every read attempt (subclasses delay or fail here)."""
        with self._stats.lock:
            self._stats.attempts += 1

    def read_attempt(self, url, start, views, limit):
        self.before_attempt(url, start, views)
        return super().read_attempt(url, start, views, limit)

    def read_all_attempt(self, url, limit):
        self.before_attempt(url, 0, [])
        return super().read_all_attempt(url, limit)

    def _meta_attempt(self) -> None:
        with self._stats.lock:
            self._stats.meta_attempts += 1

    def size_attempt(self, url, limit):
        self._meta_attempt()
        return super().size_attempt(url, limit)

    def exists_attempt(self, url, limit):
        self._meta_attempt()
        return super().exists_attempt(url, limit)

    def isdir_attempt(self, url, limit):
        self._meta_attempt()
        return super().isdir_attempt(url, limit)

    def glob_attempt(self, pattern, limit):
        self._meta_attempt()
        return super().glob_attempt(pattern, limit)


class LatencyStorage(CountingStorage):
    """A :class:`CountingStorage` that sleeps ``latency`` seconds before every read attempt (like
    the round trip of an object-store GET). Metadata calls (``size``, ``exists``, ...) are not
    delayed."""

    def __init__(self, inner: Storage | None = None, latency: float = 0.05):
        super().__init__(inner)
        self.latency = latency

    def params(self) -> dict:
        return {"latency": self.latency}

    def before_attempt(self, url, start, views):
        super().before_attempt(url, start, views)
        time.sleep(self.latency)


def http_error(message: str = "503 Service Unavailable (injected)", code: int = 503) -> OSError:
    """What an HTTP error answer looks like to the retry loop: an ``OSError`` with ``code``."""
    err = OSError(message)
    err.code = code
    return err


TRANSIENT_KINDS = ("timeout", "503", "short")
"""Kinds of injected failure :class:`FlakyStorage` cycles through by default."""


class FlakyStorage(CountingStorage):
    """Fails the first ``failures`` read attempts of each range ``(url, start, end)``.

    ``kinds`` are cycled per attempt of a range: ``"timeout"`` (``TimeoutError``), ``"503"``
    (:func:`http_error`, code 503), ``"throttle"`` (code 429), ``"short"`` (half the buffer
    filled with junk, then ``ShortReadError``; a later success must overwrite the junk),
    ``"reset"`` (``ConnectionResetError``), ``"refused"`` (``ConnectionRefusedError``); and
    permanent ones, never to be retried: ``"missing"`` (``FileNotFoundError``), ``"denied"``
    (``PermissionError``), ``"404"`` (code 404). ``only`` restricts failures to URLs containing
    that substring (e.g. ``".data-"``). ``range_attempts`` maps each range to the number of
    attempts it took; ``injected`` counts the failures raised.
    """

    range_attempts = _stat("range_attempts")
    injected = _stat("injected")

    def __init__(self, inner: Storage | None = None, failures: int = 2, kinds: tuple = TRANSIENT_KINDS, only: str = ""):
        super().__init__(inner)
        self.failures = failures
        self.kinds = tuple(kinds)
        self.only = only

    def params(self) -> dict:
        return {"failures": self.failures, "kinds": self.kinds, "only": self.only}

    def before_attempt(self, url, start, views):
        super().before_attempt(url, start, views)
        if self.only and self.only not in url:
            return
        end = start + sum(v.nbytes for v in views)
        s = self._stats
        with s.lock:
            n = s.range_attempts[(url, start, end)]
            s.range_attempts[(url, start, end)] = n + 1
            if n >= self.failures:
                return
            s.injected += 1
        _raise(self.kinds[n % len(self.kinds)], url, start, end, n, views)


def _raise(kind: str, url: str, start: int, end: int, n: int, views) -> None:
    where = f"{url} [{start}, {end}) attempt {n + 1}"
    if kind == "timeout":
        raise TimeoutError(f"injected timeout: {where}")
    if kind == "503":
        raise http_error(f"503 Service Unavailable (injected): {where}")
    if kind == "throttle":
        raise http_error(f"429 SlowDown (injected): {where}", code=429)
    if kind == "reset":
        raise ConnectionResetError(f"injected connection reset: {where}")
    if kind == "refused":
        raise ConnectionRefusedError(f"injected connection refused: {where}")
    if kind == "short":
        half = (end - start) // 2
        for v in views:  # a partial, wrong fill: the retry must overwrite it
            k = min(v.nbytes, half)
            v[:k] = b"\xa5" * k
            half -= k
            if half <= 0:
                break
        raise ShortReadError(f"injected short read: got {(end - start) // 2} of {end - start} bytes: {where}")
    if kind == "missing":
        raise FileNotFoundError(f"injected not found: {where}")
    if kind == "denied":
        raise PermissionError(f"injected access denied: {where}")
    if kind == "404":
        raise http_error(f"404 Not Found (injected): {where}", code=404)
    raise ValueError(f"unknown injected failure kind {kind!r}")
