"""Storage wrappers for tests: count calls and bytes, add latency, inject transient failures.

Each wrapper is a :class:`distrestore.storage.Storage` subclass, so the library uses it wherever
it takes ``storage=`` (``open_checkpoint(..., storage=...)``; a ``CheckpointIndex`` keeps its
storage and ``fetch`` reads data files through it). The hooks sit where the real code has them:

* public calls (``readinto``, ``read``, ``size``, ``exists``, ``isdir``, ``glob``) are counted
  as the library makes them;
* *attempts* are counted, delayed and failed in ``_preadv`` / ``_remote_into`` /
  ``_remote_whole``, the transport
  that ``Storage._call`` wraps in its retry loop, so the real retry policy runs on top.

The wrappers pickle (their dataclass fields travel; counters start again at zero on the other
side, each process counts its own calls).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, fields

from distrestore.storage import ShortReadError, Storage

__all__ = ["CountingStorage", "LatencyStorage", "FlakyStorage", "ServiceUnavailableError", "wrap", "read_range"]


def wrap(cls, storage: Storage, **kw):
    """A ``cls`` wrapper with the protocol, options and retry policy of ``storage``."""
    return cls(storage.protocol, dict(storage.storage_options), storage.retry, **kw)


@dataclass
class CountingStorage(Storage):
    """Counts calls, data requests, attempts and bytes; thread-safe.

    Attributes (reset with :meth:`reset`):

    * ``calls``: ``Counter`` of public method names (``readinto``, ``read``, ``size``, ...);
    * ``requests``: every ``readinto`` as ``(url, start, end)``, in call order;
    * ``bytes_read``: bytes asked for by ``readinto`` calls;
    * ``attempts``: transport attempts (one per try of the retry loop);
    * ``inflight`` / ``max_inflight``: ``readinto`` calls running now / at most at once.
    """

    def __post_init__(self):
        super().__post_init__()
        self._stats_lock = threading.Lock()
        self.reset()

    def __getstate__(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        with self._stats_lock:
            self.calls: Counter = Counter()
            self.requests: list[tuple[str, int, int]] = []
            self.bytes_read = 0
            self.attempts = 0
            self.inflight = 0
            self.max_inflight = 0

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.calls[name] += 1

    # -- queries -----------------------------------------------------------------------

    def data_requests(self, marker: str = ".data-") -> list[tuple[str, int, int]]:
        """``readinto`` calls on files whose URL contains ``marker`` (data shards by default)."""
        with self._stats_lock:
            return [r for r in self.requests if marker in r[0]]

    # -- counted public calls ----------------------------------------------------------

    def readinto(self, url, start, buffers, *, what=""):
        views = buffers if isinstance(buffers, (list, tuple)) else [buffers]
        length = sum(memoryview(b).nbytes for b in views)
        with self._stats_lock:
            self.calls["readinto"] += 1
            self.requests.append((url, start, start + length))
            self.bytes_read += length
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return super().readinto(url, start, buffers, what=what)
        finally:
            with self._stats_lock:
                self.inflight -= 1

    def read(self, url, start=0, end=None):
        self._count("read")
        return super().read(url, start, end)

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

    # -- transport: one call per attempt -------------------------------------------------

    def _attempt(self, url, start, views) -> None:
        """Hook run before every transport attempt (subclasses delay or fail here)."""
        with self._stats_lock:
            self.attempts += 1

    def _preadv(self, url, start, views):
        self._attempt(url, start, views)
        return super()._preadv(url, start, views)

    def _remote_into(self, url, start, views):
        self._attempt(url, start, views)
        return super()._remote_into(url, start, views)

    def _remote_whole(self, url):
        self._attempt(url, 0, [])
        return super()._remote_whole(url)


@dataclass
class LatencyStorage(CountingStorage):
    """A :class:`CountingStorage` that sleeps ``latency`` seconds before every transport
    attempt of a range read (like the round trip of an object-store GET). Metadata calls
    (``size``, ``exists``, ...) are not delayed."""

    latency: float = 0.05

    def _attempt(self, url, start, views):
        super()._attempt(url, start, views)
        time.sleep(self.latency)


class ServiceUnavailableError(OSError):
    """What an HTTP 503 looks like to the retry loop: an OSError with ``code`` = 503."""

    def __init__(self, msg: str = "503 Service Unavailable (injected)", code: int = 503):
        super().__init__(msg)
        self.code = code

    def __reduce__(self):
        return type(self), (str(self), self.code)


# kinds of injected failure, in the order FlakyStorage cycles through them
TRANSIENT_KINDS = ("timeout", "503", "short")


@dataclass
class FlakyStorage(CountingStorage):
    """Fails the first ``failures`` transport attempts of each range ``(url, start, end)``.

    ``kinds`` are cycled per attempt of a range: ``"timeout"`` (``TimeoutError``), ``"503"``
    (:class:`ServiceUnavailableError`, code 503), ``"throttle"`` (code 429), ``"short"`` (half
    the buffer filled with junk, then the library's ``ShortReadError``; a later success must
    overwrite the junk), ``"reset"`` (``ConnectionResetError``); and permanent ones, never to be
    retried: ``"missing"`` (``FileNotFoundError``), ``"denied"`` (``PermissionError``), ``"404"``
    (an OSError with code 404). ``only`` restricts failures to URLs
    containing that substring (e.g. ``".data-"``). ``range_attempts`` maps each range to the
    number of attempts it took; ``injected`` counts the failures raised.
    """

    failures: int = 2
    kinds: tuple = TRANSIENT_KINDS
    only: str = ""

    def reset(self) -> None:
        super().reset()
        with self._stats_lock:
            self.range_attempts: Counter = Counter()
            self.injected = 0

    def _attempt(self, url, start, views):
        super()._attempt(url, start, views)
        if self.only and self.only not in url:
            return
        end = start + sum(v.nbytes for v in views)
        with self._stats_lock:
            n = self.range_attempts[(url, start, end)]
            self.range_attempts[(url, start, end)] = n + 1
            if n >= self.failures:
                return
            self.injected += 1
        kind = self.kinds[n % len(self.kinds)]
        where = f"{url} [{start}, {end}) attempt {n + 1}"
        if kind == "timeout":
            raise TimeoutError(f"injected timeout: {where}")
        if kind == "503":
            raise ServiceUnavailableError(f"503 Service Unavailable (injected): {where}")
        if kind == "throttle":
            raise ServiceUnavailableError(f"429 SlowDown (injected): {where}", code=429)
        if kind == "reset":
            raise ConnectionResetError(f"injected connection reset: {where}")
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
            raise ServiceUnavailableError(f"404 Not Found (injected): {where}", code=404)
        raise ValueError(f"unknown injected failure kind {kind!r}")


def read_range(storage: Storage, url: str, start: int, end: int) -> tuple[bytes, str]:
    """``storage.read(url, start, end)`` and the storage's type name; importable by a child
    process (``multiprocessing`` spawn), to check a pickled Storage works elsewhere."""
    return storage.read(url, start, end), type(storage).__name__
