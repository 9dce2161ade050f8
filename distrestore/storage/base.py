"""The storage interface: read byte ranges of files into caller-given buffers, with one retry policy.

A :class:`Storage` names files by local path or URL. Backends (``local.py``, ``fsspec.py``)
implement single *attempts* — a range read, a whole-file read, metadata calls — and know nothing
of retries; everything around an attempt is written once here: retrying transient failures with
jittered backoff, failing permanent ones at once, the per-range and per-call deadlines, and error
messages that name the file and byte range and never show a credential. Wrappers that count,
delay or fail attempts (``wrappers.py``) compose with any backend the same way.

A storage pickles as its class, URL scheme, options, retry policy and limits, and makes its
filesystem again where it is unpickled, so Ray workers and forked processes never share one.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CheckpointNotFoundError, DeadlineExceededError, DistRestoreError, ShortReadError, StorageError
from ..redact import RedactedOptions, redact_options, redact_text, secret_values
from .paths import protocol_of

if TYPE_CHECKING:
    from .early import EarlyRead

_RAISE = object()  # _retry(not_found=...): raise CheckpointNotFoundError
COPY_CHUNK = 16 << 20  # bytes per piece of a copy streamed through this process


@dataclass(frozen=True)
class RetryPolicy:
    """How one range (or metadata call) is retried: jittered exponential backoff between attempts,
    all attempts of a range under ``deadline`` seconds. A refused connection is retried only
    while the first refusal of the range is less than ``refused_window`` seconds old: a server
    that restarts comes back within it, an endpoint where nothing listens fails fast."""

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    deadline: float = 120.0  # seconds for one range, all attempts together
    refused_window: float = 2.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2**attempt))


def deadline_at(deadline: float | None) -> float | None:
    """The wall-clock time (``time.time()``) ``deadline`` seconds from now (None: no deadline):
    what ``Storage.limited(deadline_at=)`` takes. Wall-clock, so it means the same on a Ray
    worker."""
    return None if deadline is None else time.time() + deadline


# -- which failures are worth retrying ------------------------------------------------------------

PERMANENT, TRANSIENT, REFUSED = "permanent", "transient", "refused"

_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}  # a write that cannot succeed now
# error codes object stores answer with that no retry can change
_PERMANENT_TEXT = (
    "NoSuchKey",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "InvalidRange",
    "not satisfiable",
    "Forbidden",
)
_PERMANENT_NAMES = ("Credential", "NoRegionError", "NoAuthToken", "UnknownSignatureVersion", "InvalidEndpoint")


def _chain(exc: BaseException, depth: int = 8):
    """``(e, wrapped)`` for ``exc`` and the exceptions it wraps: its cause, a library's
    ``os_error``/``kwargs["error"]`` (botocore) and exception arguments (``wrapped`` True), and
    the exception it was raised while handling (``__context__``: ``wrapped`` False, since that
    one may be unrelated)."""
    seen: set[int] = set()
    todo = [(exc, True)]
    while todo and len(seen) < depth:
        e, wrapped = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e, wrapped
        kwargs = getattr(e, "kwargs", None)
        inner = [kwargs.get("error")] if isinstance(kwargs, dict) else []
        args = [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo += [(x, wrapped) for x in (e.__cause__, getattr(e, "os_error", None), *inner, *args)]
        todo.append((e.__context__, False))


def failure_kind(exc: BaseException) -> str:
    """``PERMANENT`` (not found, access denied, no credentials, name resolution, unreachable
    network, a full disk, a bad request), ``REFUSED`` (a refused connection) or ``TRANSIENT``
    (timeouts, resets, throttling, 5xx, short reads: anything else)."""
    if isinstance(exc, (ShortReadError, TimeoutError, ConnectionResetError, ConnectionAbortedError)):
        return TRANSIENT
    refused = False
    for e, wrapped in _chain(exc):
        if (wrapped and isinstance(e, _PERMANENT_TYPES)) or isinstance(e, socket.gaierror):
            return PERMANENT
        names = [c.__name__ for c in type(e).__mro__]
        if any(p in n for n in names for p in _PERMANENT_NAMES) or "ClientConnectorDNSError" in names:
            return PERMANENT
        if isinstance(e, OSError) and (e.errno in _UNREACHABLE or e.errno in _FULL):
            return PERMANENT
        # an HTTP status on the error; aiohttp's own errors carry parser codes (400 for a
        # malformed answer), not the server's status: the storage libraries check that themselves
        code = (
            None if type(e).__module__.startswith("aiohttp") else getattr(e, "code", None) or getattr(e, "status", None)
        )
        if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
            # gcsfs: a 401 "Invalid Credentials" is an expired token, refreshed on the next try
            if not (code == 401 and "Invalid Credentials" in str(e)):
                return PERMANENT
        if any(s in str(e) for s in _PERMANENT_TEXT):
            return PERMANENT
        refused = refused or isinstance(e, ConnectionRefusedError)
    return REFUSED if refused else TRANSIENT


def is_transient(exc: BaseException) -> bool:
    """Timeouts, connection resets, throttling and 5xx are worth retrying; not-found is not."""
    return failure_kind(exc) != PERMANENT


# -- the interface --------------------------------------------------------------------------------


class Storage(ABC):
    """Reads (and, for the writer, writes) files of one URL scheme.

    ``Storage.for_url(url, storage_options)`` (or ``Storage(protocol, storage_options)``) gives
    the backend for the scheme: :class:`~distrestore.storage.local.LocalStorage` for paths and
    ``file://``, :class:`~distrestore.storage.fsspec.FsspecStorage` for anything fsspec reads.

    ``timeout``: seconds a request may wait to connect or for the next bytes before it is
    abandoned and retried (set in the backend: botocore's connect/read timeouts, gcsfs's aiohttp
    timeouts; local files ignore it). ``deadline_at``: a wall-clock time (``time.time()``) after
    which no attempt starts and running ones are abandoned (:meth:`limited` sets it per call).
    """

    local = False
    early: Mapping[str, EarlyRead] = {}
    """A read begun before the plan, by file (:meth:`serving`): reads of that file take what it
    holds first."""

    def __new__(cls, *args, **kwargs):
        if cls is Storage:  # Storage("s3", {...}) builds the backend for the scheme, like pathlib.Path
            protocol = args[0] if args else kwargs.get("protocol", "file")
            cls = _backend_class(protocol)
        return super().__new__(cls)

    def __init__(
        self,
        protocol: str = "file",
        storage_options: Mapping | None = None,
        retry: RetryPolicy | None = None,
        *,
        timeout: float | None = None,
        deadline_at: float | None = None,
    ):
        self.protocol = protocol
        self.storage_options = RedactedOptions(storage_options or {})
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.deadline_at = deadline_at

    @classmethod
    def for_url(cls, url, storage_options: Mapping | None = None, **kw) -> Storage:
        """The storage for ``url``'s scheme (``retry=``, ``timeout=``, ``deadline_at=`` as keywords)."""
        return Storage(protocol_of(os.fspath(url)), dict(storage_options or {}), **kw)

    # -- identity, pickling, display -----------------------------------------------------------

    def settings(self) -> dict:
        """What defines this storage (and travels when it is pickled)."""
        return {
            "protocol": self.protocol,
            "storage_options": dict(self.storage_options),
            "retry": self.retry,
            "timeout": self.timeout,
            "deadline_at": self.deadline_at,
        }

    def __getstate__(self):
        return self.settings()

    def __setstate__(self, state):
        self.__init__(**state)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    __hash__ = None  # options are dicts: equal storages compare equal, none is a dict key

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("timeout", "deadline_at") if getattr(self, k))
        return f"{type(self).__name__}({self.protocol!r}, {redact_options(self.storage_options)!r}{extra})"

    def limited(self, *, timeout: float | None = None, deadline_at: float | None = None) -> Storage:
        """This storage with another per-request ``timeout`` and/or call ``deadline_at`` (None
        keeps the current one; the same object when nothing changes). A wrapper returns a wrapper
        of the limited inner storage that shares its counters."""
        settings = self.settings()
        if timeout is not None:
            settings["timeout"] = timeout
        if deadline_at is not None:
            settings["deadline_at"] = deadline_at
        if settings == self.settings():
            return self
        out = type(self)(**settings)
        out.early = self.early
        return out

    def begin_head(self, url: str) -> EarlyRead | None:
        """Begin a GET for the head of file ``url`` now, for a plan not made yet (``early.py``);
        None where the backend does not (a local read has no round trip to save)."""
        return None

    def serving(self, early: EarlyRead) -> Storage:
        """A copy of this storage whose reads of ``early.url`` take what ``early`` holds first.
        The early read does not travel when the storage is pickled: a Ray worker reads for itself."""
        out = type(self)(**self.settings())
        out.early = {early.url: early}
        return out

    def secrets(self) -> set[str]:
        """The credential strings in this storage's options (masked wherever text is shown)."""
        return secret_values(self.storage_options)

    # -- single attempts: what a backend implements --------------------------------------------

    @abstractmethod
    def read_attempt(self, url: str, start: int, views: list[memoryview], limit: float | None) -> list[int] | None:
        """One try at filling ``views`` (consecutive in the file) from byte ``start``; raise
        ``EOFError`` past the end of the file, ``ShortReadError`` for a short answer. ``limit``:
        seconds this attempt may take (None: no limit). Returns CRC32Cs where computed."""

    @abstractmethod
    def read_all_attempt(self, url: str, limit: float | None) -> bytes:
        """One try at the whole file."""

    @abstractmethod
    def size_attempt(self, url: str, limit: float | None) -> int: ...

    @abstractmethod
    def exists_attempt(self, url: str, limit: float | None) -> bool: ...

    @abstractmethod
    def isdir_attempt(self, url: str, limit: float | None) -> bool: ...

    @abstractmethod
    def glob_attempt(self, pattern: str, limit: float | None) -> list[str]: ...

    # writing (the writer): single attempts of idempotent calls, retried below
    @abstractmethod
    def write_attempt(self, url: str, data: bytes, limit: float | None) -> None:
        """One try at writing ``data`` as the whole file."""

    @abstractmethod
    def makedirs_attempt(self, url: str, limit: float | None) -> None: ...

    @abstractmethod
    def rename_attempt(self, src: str, dst: str, limit: float | None) -> None: ...

    @abstractmethod
    def remove_attempt(self, url: str, limit: float | None) -> None: ...

    @abstractmethod
    def open_write(self, url: str):
        """A writable binary file (streamed; not retried: a failed stream is written again by
        its caller, or use :meth:`upload`)."""

    def upload_attempt(self, url: str, chunks: Callable[[], Iterable], limit: float | None) -> None:
        """One try at writing the pieces ``chunks()`` yields (bytes-like) as the whole file ``url``,
        streamed through :meth:`open_write`. Nothing partial is left published: on failure ``url``
        is removed (a backend whose uploads can be aborted aborts instead, keeping what was
        there). A stream cannot be cut at ``limit``: a stalled request ends at the backend's
        ``timeout``."""
        f = self.open_write(url)
        try:
            for chunk in chunks():
                f.write(chunk)
            f.close()
        except BaseException:
            for undo in (f.close, lambda: self.remove_attempt(url, limit)):
                try:
                    undo()
                except Exception:  # the attempt's own error is the one to report
                    pass
            raise

    def copy_attempt(self, src: str, dst: str, limit: float | None) -> None:
        """One try at making ``dst`` a copy of ``src``, both in this storage: a server-side copy
        where the backend has one; by default the bytes stream through :meth:`upload_attempt` in
        pieces of :data:`COPY_CHUNK` bytes (bounded memory)."""
        size = self.size_attempt(src, limit)

        def chunks() -> Iterator[bytearray]:
            for start in range(0, size, COPY_CHUNK):
                piece = bytearray(min(COPY_CHUNK, size - start))
                self.read_attempt(src, start, [memoryview(piece)], limit)
                yield piece

        self.upload_attempt(dst, chunks, limit)

    # -- writing, retried ------------------------------------------------------------------------

    def write_bytes(self, url: str, data: bytes) -> None:
        self._retry(url, None, lambda limit: self.write_attempt(url, data, limit), verb="writing")

    def makedirs(self, url: str) -> None:
        self._retry(url, None, lambda limit: self.makedirs_attempt(url, limit), verb="making")

    def rename(self, src: str, dst: str) -> None:
        self._retry(src, None, lambda limit: self.rename_attempt(src, dst, limit), verb="renaming")

    def remove(self, url: str) -> None:
        self._retry(url, None, lambda limit: self.remove_attempt(url, limit), verb="removing")

    def copy(self, src: str, dst: str) -> None:
        """Make ``dst`` a copy of ``src`` within this storage (a server-side copy on object
        stores), retried as a whole: a copy writes one whole object, so a repeat is harmless."""
        self._retry(src, None, lambda limit: self.copy_attempt(src, dst, limit), what=f"to {dst}", verb="copying")

    def upload(self, url: str, chunks: Callable[[], Iterable]) -> None:
        """Write the pieces that ``chunks()`` yields (bytes-like) as the whole file ``url``,
        retried as a whole: each attempt calls ``chunks()`` again and streams every piece from the
        first (so ``chunks`` must yield the same bytes each time), and a failed attempt publishes
        nothing (an object store's multipart upload is aborted). An error raised while
        producing a piece is not this storage's: it ends the upload at once, as it was raised."""
        failed: list[Exception] = []

        def produced() -> Iterator:
            try:
                yield from chunks()
            except Exception as e:
                failed.append(e)
                # permanent to the retry loop (one attempt); the producer's own error is raised below
                raise ValueError("the bytes to write could not be produced") from e

        try:
            self._retry(url, None, lambda limit: self.upload_attempt(url, produced, limit), verb="writing")
        except DistRestoreError:
            if failed:
                raise failed[-1] from failed[-1].__cause__
            raise

    # -- reading, retried ------------------------------------------------------------------------

    def exists(self, url: str) -> bool:
        return self._retry(url, None, lambda limit: self.exists_attempt(url, limit), not_found=False)

    def isdir(self, url: str) -> bool:
        return self._retry(url, None, lambda limit: self.isdir_attempt(url, limit), not_found=False)

    def size(self, url: str) -> int:
        return self._retry(url, None, lambda limit: self.size_attempt(url, limit))

    def glob(self, pattern: str) -> list[str]:
        return sorted(self._retry(pattern, None, lambda limit: self.glob_attempt(pattern, limit)))

    def read(self, url: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a file (the whole file when end is None)."""
        if end is None and start == 0:
            # one GET, not a size request first: object stores charge a round trip each
            return self._retry(url, None, lambda limit: self.read_all_attempt(url, limit))
        if end is None:
            end = self.size(url)
        buf = bytearray(end - start)
        self.readinto(url, start, memoryview(buf))
        return bytes(buf)

    def readinto(self, url: str, start: int, buffers, *, what: str = "") -> list[int] | None:
        """Fill ``buffers`` (one writable buffer or a list of them, consecutive in the file)
        with the bytes of ``url`` from ``start``; retried per the policy; raises StorageError.
        Returns the CRC32C of each buffer where the read computed them on the way (local files
        with the C kernel, fsspec stores), else None."""
        if not isinstance(buffers, (list, tuple)):
            buffers = [buffers]
        views = [memoryview(b).cast("B") for b in buffers]
        length = sum(v.nbytes for v in views)
        if length == 0:  # s3fs answers an empty range with the whole object
            return None
        return self._retry(
            url, (start, start + length), lambda limit: self.read_attempt(url, start, views, limit), what=what
        )

    def call_with_retry(
        self, url: str, byte_range: tuple[int, int] | None, fn: Callable[[], object], *, what: str = ""
    ):
        """Run ``fn()`` (one attempt at something with ``url``) under this storage's retry
        policy, deadline and error handling: what an executor uses for a read of its own
        (e.g. mapping a local file)."""
        return self._retry(url, byte_range, lambda limit: fn(), what=what)

    def seconds_left(self) -> float | None:
        """Seconds until the call's deadline (None without one)."""
        return None if self.deadline_at is None else self.deadline_at - time.time()

    def _retry(self, url: str, byte_range, attempt, *, what: str = "", not_found=_RAISE, verb: str = "reading"):
        now = time.monotonic()
        end = now + self.retry.deadline
        left = self.seconds_left()
        call_bound = left is not None and now + left < end
        if call_bound:
            end = now + left
        n = 0
        refused_since = None
        last = None
        while True:
            limit = end - time.monotonic()
            if limit <= 0:
                raise self._failure(verb, url, byte_range, what, n, last, deadline=call_bound) from self._cause(last)
            n += 1
            try:
                return attempt(limit)
            except FileNotFoundError:
                if not_found is not _RAISE:
                    return not_found
                raise CheckpointNotFoundError(f"file not found: {url}") from None
            except EOFError as e:
                raise StorageError(
                    f"{_where(url, byte_range, what)}: file is shorter than the checkpoint index says ({e}); "
                    "the data file is truncated"
                ) from None
            except Exception as e:
                last = e
                kind = failure_kind(e)
                now = time.monotonic()
                if kind == REFUSED:
                    refused_since = refused_since if refused_since is not None else now
                    if now - refused_since >= self.retry.refused_window:
                        kind = PERMANENT
                if kind == PERMANENT or n >= self.retry.attempts or now >= end:
                    deadline = call_bound and kind != PERMANENT and now >= end
                    raise self._failure(verb, url, byte_range, what, n, e, deadline=deadline) from self._cause(e)
                time.sleep(max(0.0, min(self.retry.backoff(n), end - now)))

    def _cause(self, exc: BaseException | None) -> BaseException | None:
        """``exc`` to chain to our error, or None where its text (or its own chain's) would show
        a credential."""
        if exc is None:
            return None
        text = "".join(traceback.format_exception(exc))
        return None if redact_text(text, self.secrets()) != text else exc

    def _failure(self, verb, url, byte_range, what, attempts, exc, *, deadline: bool) -> StorageError:
        where = _where(url, byte_range, what)
        cause = "" if exc is None else f": {type(exc).__name__}: {redact_text(str(exc), self.secrets())}"
        if deadline:
            return DeadlineExceededError(f"{verb} {where}: the deadline passed after {attempts} attempt(s){cause}")
        return StorageError(f"{verb} {where} failed after {attempts} attempt(s){cause}")


def _where(url: str, byte_range, what: str) -> str:
    where = url + (f" bytes [{byte_range[0]}, {byte_range[1]})" if byte_range else "")
    return where + (f" ({what})" if what else "")


def _backend_class(protocol: str) -> type[Storage]:
    if protocol == "file":
        from .local import LocalStorage

        return LocalStorage
    from .fsspec import FsspecStorage

    return FsspecStorage
