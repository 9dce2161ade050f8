"""Storage: read byte ranges of local files or any fsspec URL into caller-given buffers.

One primitive, :meth:`Storage.readinto`, with per-range retry of transient failures. Local paths
read straight into the destination: with the C kernel (``_native.mapped_read``) a range of 1 MiB or
more is copied from a mapping of the page cache by a loop that CRC32C-checksums the bytes it moves
(less than half the CPU time of ``preadv``, checksums included), and the checksums are returned;
without it, with ``os.preadv``. Remote ones go through fsspec ``cat_file`` (one copy into the
destination). A :class:`Storage` pickles as its URL scheme
and ``storage_options`` and makes its filesystem again where it is unpickled, so Ray workers and
forked processes never share a hidden filesystem instance.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

from ._native import mapped_read
from .errors import CheckpointNotFoundError, ShortReadError, StorageError

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs alike (URLs always use '/')."""
    if is_local(base):
        return os.path.join(base, *parts)
    out = base
    for p in parts:
        out = p if "://" in p else out.rstrip("/") + "/" + p.lstrip("/")
    return out


def dirname(url: str) -> str:
    if is_local(url):
        return os.path.dirname(url)
    return url.rstrip("/").rsplit("/", 1)[0]


def is_absolute(path: str) -> bool:
    return "://" in path or os.path.isabs(path)


_filesystems: dict[tuple, object] = {}
_filesystems_lock = threading.Lock()


def _filesystem(protocol: str, options: dict):
    """One fsspec filesystem per (process, protocol, options): making an s3fs/gcsfs client costs
    0.3 s, too much per call. Our own explicit cache (fsspec's is bypassed with
    ``skip_instance_cache``), keyed by pid so a forked or Ray worker makes its own."""
    import pickle

    try:
        key = (os.getpid(), protocol, pickle.dumps(sorted(options.items())))
    except Exception:  # unpicklable options (e.g. a session object): no caching
        key = None
    if key is not None and key in _filesystems:
        return _filesystems[key]
    import fsspec

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"cannot open {protocol}:// URLs: {e}. For s3:// install 'distrestore[s3]', for gs:// 'distrestore[gcs]'"
        ) from e
    fs = cls(skip_instance_cache=True, **options)
    if key is not None:
        with _filesystems_lock:
            fs = _filesystems.setdefault(key, fs)
    return fs


@dataclass(frozen=True)
class RetryPolicy:
    """Per-range retries: jittered exponential backoff, all attempts under one deadline."""

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    deadline: float = 120.0  # seconds for one range, all attempts together

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2**attempt))


def is_transient(exc: BaseException) -> bool:
    """Timeouts, connection resets, throttling and 5xx are worth retrying; not-found is not."""
    if isinstance(exc, ShortReadError):
        return True
    if isinstance(exc, _PERMANENT):
        return False
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
        return False
    if code == 416:
        return False
    text = str(exc)
    if any(s in text for s in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidRange", "not satisfiable")):
        return False
    return True


@dataclass
class Storage:
    """A filesystem for one URL scheme, made lazily and re-made after unpickling."""

    protocol: str = "file"
    storage_options: dict = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self):
        self._fs = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url, storage_options: dict | None = None, **kw) -> Storage:
        url = os.fspath(url)
        protocol = "file" if is_local(url) else url.split("://", 1)[0]
        return cls(protocol, dict(storage_options or {}), **kw)

    def __getstate__(self):
        return {"protocol": self.protocol, "storage_options": self.storage_options, "retry": self.retry}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self):
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs = _filesystem(self.protocol, self.storage_options)
        return self._fs

    # -- metadata ------------------------------------------------------------------------

    def exists(self, url: str) -> bool:
        if self.local:
            return os.path.exists(local_path(url))
        return self.fs.exists(url)

    def isdir(self, url: str) -> bool:
        if self.local:
            return os.path.isdir(local_path(url))
        return self.fs.isdir(url)

    def size(self, url: str) -> int:
        if self.local:
            try:
                return os.stat(local_path(url)).st_size
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"file not found: {url}") from None
        return self._call(url, None, lambda: self.fs.size(url))

    def glob(self, pattern: str) -> list[str]:
        if self.local:
            import glob

            return sorted(glob.glob(local_path(pattern)))
        protocol = self.protocol + "://"
        return sorted(p if "://" in p else protocol + p for p in self.fs.glob(pattern))

    # -- reading -------------------------------------------------------------------------

    def read(self, url: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a file (the whole file when end is None)."""
        if end is None and start == 0 and not self.local:
            # one GET, not a size request first: object stores charge a round trip each
            return self._call(url, None, lambda: self._remote_whole(url))
        if end is None:
            end = self.size(url)
        buf = bytearray(end - start)
        self.readinto(url, start, memoryview(buf))
        return bytes(buf)

    def readinto(self, url: str, start: int, buffers, *, what: str = "") -> list[int] | None:
        """Fill ``buffers`` (one writable buffer or a list of them, consecutive in the file)
        with the bytes of ``url`` from ``start``; retried per the policy; raises StorageError.
        Returns the CRC32C of each buffer where the read computed them on the way (local files
        with the C kernel), else None."""
        if not isinstance(buffers, (list, tuple)):
            buffers = [buffers]
        views = [memoryview(b).cast("B") for b in buffers]
        length = sum(v.nbytes for v in views)
        if length == 0:  # s3fs answers an empty range with the whole object
            return None
        return self._call(
            url,
            (start, start + length),
            lambda: (self._preadv if self.local else self._remote_into)(url, start, views),
            what=what,
        )

    def _preadv(self, url: str, start: int, views: list[memoryview]) -> list[int] | None:
        fd = os.open(local_path(url), os.O_RDONLY)
        try:
            if mapped_read.available:  # same partial-read and end-of-file behaviour as below
                return mapped_read.read(fd, start, views)
            views = list(views)  # trimmed below after a partial read; a retry starts afresh
            pos, i = start, 0
            while i < len(views):
                batch = views[i : i + 1024]  # IOV_MAX
                want = sum(v.nbytes for v in batch)
                got = os.preadv(fd, batch, pos)
                if got == want:
                    pos += got
                    i += len(batch)
                    continue
                if got == 0:
                    raise EOFError(f"end of file at byte {pos}")
                # partial read: drop what was filled and go on from there
                pos += got
                while got and got >= views[i].nbytes:
                    got -= views[i].nbytes
                    i += 1
                if got:
                    views[i] = views[i][got:]
            return None
        finally:
            os.close(fd)

    def _remote_into(self, url: str, start: int, views: list[memoryview]) -> None:
        length = sum(v.nbytes for v in views)
        data = self.fs.cat_file(url, start=start, end=start + length)
        if len(data) != length:
            size = self.fs.size(url)
            if start + length > size:  # past the end: the file is truncated, retrying won't help
                raise EOFError(f"the file has {size} bytes")
            raise ShortReadError(f"got {len(data)} of {length} bytes")
        pos = 0
        for v in views:
            v[:] = data[pos : pos + v.nbytes]
            pos += v.nbytes

    def _remote_whole(self, url: str) -> bytes:
        return bytes(self.fs.cat_file(url))

    def _call(self, url: str, byte_range, fn, *, what: str = ""):
        where = url + (f" bytes [{byte_range[0]}, {byte_range[1]})" if byte_range else "")
        if what:
            where += f" ({what})"
        deadline = time.monotonic() + self.retry.deadline
        attempt = 0
        while True:
            try:
                return fn()
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"file not found: {url}") from None
            except EOFError as e:
                raise StorageError(
                    f"{where}: file is shorter than the checkpoint index says ({e}); the data file is truncated"
                ) from None
            except Exception as e:
                attempt += 1
                if not is_transient(e) or attempt >= self.retry.attempts or time.monotonic() >= deadline:
                    raise StorageError(
                        f"reading {where} failed after {attempt} attempt(s): {type(e).__name__}: {e}"
                    ) from e
                time.sleep(min(self.retry.backoff(attempt), max(0.0, deadline - time.monotonic())))

    # -- writing (the writer and tests) ----------------------------------------------------

    def write_bytes(self, url: str, data: bytes) -> None:
        if self.local:
            with open(local_path(url), "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(url, data)

    def open_write(self, url: str):
        if self.local:
            return open(local_path(url), "wb")
        return self.fs.open(url, "wb")

    def makedirs(self, url: str) -> None:
        if self.local:
            os.makedirs(local_path(url) or ".", exist_ok=True)
        else:
            self.fs.makedirs(url, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        if self.local:
            os.replace(local_path(src), local_path(dst))
        else:
            self.fs.mv(src, dst)

    def remove(self, url: str) -> None:
        if self.local:
            os.remove(local_path(url))
        else:
            self.fs.rm_file(url)
