"""Object stores and anything else fsspec reads (s3://, gs://, memory://, http://, ...).

Ranges of s3:// and gs:// objects are streamed into their destination buffers, each chunk copied
into place with its CRC32C as it arrives (``streaming.py``); other schemes read a range with
``cat_file`` and copy the answer into place in one pass the same way. Either way the checksums
are returned, as local reads return theirs. Four things make the retry policy of ``base.py`` the
only one, with timeouts that hold:

* **The backend retries once.** s3fs and gcsfs each retry inside a call (s3fs 5 times, botocore
  up to 5 more, gcsfs 6 times with sleeps up to 32 s), which multiplied a stalled request into
  many minutes. The filesystems made here are single-try variants of those classes, and botocore
  is told ``retries={"total_max_attempts": 1}``.
* **Enough connections.** botocore keeps at most 10 connections per client; the filesystems
  made here may hold :data:`S3_CONNECTIONS`, so concurrent reads do not queue for one.
* **Timeouts come from** ``timeout=``: botocore's ``connect_timeout``/``read_timeout`` (s3fs's
  ``config_kwargs``) and gcsfs's aiohttp ``requests_timeout`` (``sock_connect``/``sock_read``).
  Options the user set in ``storage_options`` win over the derived ones.
* **An attempt is cut at its limit** (what is left of the range's or the call's deadline):
  fsspec's ``sync(timeout=)`` cancels the request on the event loop, so no thread waits past it.

Filesystems come from fsspec's own instance cache (one per process and set of options), with a
bound: at most :data:`MAX_FILESYSTEMS` made here stay cached; older ones are dropped from the cache
(and freed with their connections and credentials once no storage uses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
import time
from collections import OrderedDict

from ..errors import ShortReadError, StorageError
from ..format import crc
from ..redact import guard_logs
from .base import Storage
from .early import EarlyRead
from .streaming import Sink, coroutines, methods

DEFAULT_TIMEOUT = 30.0
"""Seconds a request may wait to connect or for its next bytes when ``timeout=`` is not given."""

MAX_FILESYSTEMS = 8
"""Distinct filesystems (sets of options) kept in fsspec's instance cache by distrestore."""

S3_CONNECTIONS = 64
"""Connections an s3fs filesystem made here may hold (botocore's ``max_pool_connections``, 10 by
default), enough for every read the thread executor has in flight against one store."""

_S3 = ("s3", "s3a")
_GCS = ("gs", "gcs")


class FsspecStorage(Storage):
    """Any fsspec URL scheme; ``storage_options`` are the filesystem's constructor arguments."""

    def __init__(self, protocol: str, storage_options=None, retry=None, **limits):
        super().__init__(protocol, storage_options, retry, **limits)
        self._fs = None
        self._lock = threading.Lock()

    @property
    def fs(self):
        """The fsspec filesystem, made on first use."""
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    guard_logs(self.secrets())  # before the library logs its first request
                    options = backend_options(self.protocol, self.storage_options, self.timeout)
                    self._fs = filesystem(self.protocol, options)
        return self._fs

    def _call(self, method: str, *args, limit: float | None = None, **kwargs):
        fs = self.fs
        if limit is not None and getattr(fs, "async_impl", False):
            kwargs["timeout"] = max(limit, 1e-3)  # fsspec's sync(): 0 would mean "no limit"
        return getattr(fs, method)(*args, **kwargs)

    def read_attempt(self, url, start, views, limit=None):
        length = sum(v.nbytes for v in views)
        if hasattr(self.fs, "distrestore_read_into"):  # s3fs, gcsfs: streamed into place
            sink = Sink(views)
            pos, end = start, start + length
            early = self.early.get(url)
            if early is not None:  # what the head asked for with the index holds, then the rest
                began = time.monotonic()
                pos = early.serve(start, end, sink, limit)
                limit = None if limit is None else limit - (time.monotonic() - began)
            if pos < end:
                self._call("distrestore_read_into", url, pos, end, sink, limit=limit)
            got, crcs = sink.received, sink.crcs
        else:
            data = self._call("cat_file", url, start=start, end=start + length, limit=limit)
            got = len(data)
            # one pass over the response: copied into place and checksummed (no slice copies)
            crcs = crc.copy_into(data, views) if got == length else None
        if got != length:
            size = self._call("info", url, limit=limit)["size"]
            if start + length > size:  # past the end: the file is truncated, retrying won't help
                raise EOFError(f"the file has {size} bytes")
            raise ShortReadError(f"got {got} of {length} bytes")
        return crcs

    def begin_head(self, url):
        fs = self.fs
        found = coroutines(fs)  # s3fs, gcsfs (``streaming.py``)
        if found is None:
            return None
        connect, read_into = found

        connected = None

        async def read(start, end, sink):
            nonlocal connected
            # the client is made once, not by each GET at once: s3fs and gcsfs make it on first
            # use without a lock, and an s3fs client costs tens of ms of CPU
            connected = connected or asyncio.ensure_future(connect())
            await asyncio.shield(connected)
            await read_into(url, start, end, sink)

        def begin(start, end, sink):
            # on the filesystem's event loop, bounded by its own timeouts; discard() cancels it
            return asyncio.run_coroutine_threadsafe(read(start, end, sink), fs.loop)

        return EarlyRead(url, begin)

    def read_all_attempt(self, url, limit=None) -> bytes:
        return bytes(self._call("cat_file", url, limit=limit, **_one_get(type(self.fs))))

    def size_attempt(self, url, limit=None) -> int:
        return self._call("info", url, limit=limit)["size"]

    def exists_attempt(self, url, limit=None) -> bool:
        return self._call("exists", url, limit=limit)

    def isdir_attempt(self, url, limit=None) -> bool:
        return self._call("isdir", url, limit=limit)

    def glob_attempt(self, pattern, limit=None) -> list[str]:
        prefix = self.protocol + "://"
        return [p if "://" in p else prefix + p for p in self._call("glob", pattern, limit=limit)]

    def write_attempt(self, url, data, limit=None) -> None:
        self._call("pipe_file", url, data, limit=limit)

    def open_write(self, url):
        return self.fs.open(url, "wb")

    def upload_attempt(self, url, chunks, limit=None) -> None:
        f = self.fs.open(url, "wb")
        try:
            for chunk in chunks():
                f.write(chunk)
            f.close()
        except BaseException:
            from fsspec.spec import AbstractBufferedFile

            if isinstance(f, AbstractBufferedFile):  # s3fs, gcsfs: nothing is visible before the end
                _abandon(f)
            else:  # memory:// and the like: visible while being written
                for undo in (f.close, lambda: self._call("rm_file", url)):
                    with contextlib.suppress(Exception):  # the attempt's own error is the one to report
                        undo()
            raise

    def copy_attempt(self, src, dst, limit=None) -> None:
        # a server-side copy takes the time the store needs for the object's size: only a call's
        # deadline cuts it (a stalled request still ends at the backend's timeout)
        try:
            self._call("cp_file", src, dst, limit=limit if self.deadline_at is not None else None)
        except NotImplementedError:  # no server-side copy here: stream it
            super().copy_attempt(src, dst, limit)

    def makedirs_attempt(self, url, limit=None) -> None:
        self._call("makedirs", url, exist_ok=True, limit=limit)

    def rename_attempt(self, src, dst, limit=None) -> None:
        self.fs.mv(src, dst)  # copy + delete in fsspec, not one call that a time limit could cut

    def remove_attempt(self, url, limit=None) -> None:
        self._call("rm_file", url, limit=limit)


@functools.cache
def _one_get(cls: type) -> dict:
    """``cat_file`` keywords that read a whole file of a ``cls`` filesystem in one GET (decided
    once per class). s3fs (since it learned to split a whole-object read over concurrent GETs)
    first asks the object's size: a round trip more for every index and state file, which are
    read whole."""
    cat = getattr(cls, "_cat_file", None)
    if cat is not None and "max_concurrency" in inspect.signature(cat).parameters:
        return {"max_concurrency": 1}
    return {}


def _abandon(f) -> None:
    """Drop an unfinished upload of an fsspec buffered file without publishing it. Such a file
    publishes what it holds when it is closed (also by ``__exit__`` and ``__del__``): abort its
    multipart (s3fs) or resumable (gcsfs) upload instead, and mark it closed so that nothing
    closes it later."""
    with contextlib.suppress(Exception):  # best effort: an upload never completed stays invisible
        f.discard()
    f.closed = True


def backend_options(protocol: str, options, timeout: float | None) -> dict:
    """``options`` plus the backend's timeouts from ``timeout`` and its own retries turned off,
    where the user did not set them."""
    t = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    out = dict(options)
    if protocol in _S3:
        config = dict(out.get("config_kwargs") or {})
        config.setdefault("connect_timeout", t)
        config.setdefault("read_timeout", t)
        config.setdefault("retries", {"total_max_attempts": 1})
        # botocore's pool holds 10 connections: more concurrent reads would wait for one
        config.setdefault("max_pool_connections", S3_CONNECTIONS)
        out["config_kwargs"] = config
    elif protocol in _GCS and "requests_timeout" not in out:
        import aiohttp

        out["requests_timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)
    elif protocol in ("http", "https"):
        client = dict(out.get("client_kwargs") or {})
        if "timeout" not in client:
            import aiohttp

            client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)
        out["client_kwargs"] = client
    return out


# -- filesystems: single-try classes, fsspec's instance cache with a bound ------------------------

_single_try_classes: dict[type, type] = {}
_made: OrderedDict[int, object] = OrderedDict()  # id -> filesystem, most recently used last
_made_lock = threading.Lock()


def _single_try(cls: type) -> type:
    """``cls``, or a subclass of it that does not retry inside a call (s3fs, gcsfs)."""
    with _made_lock:
        if cls in _single_try_classes:
            return _single_try_classes[cls]
        attrs = {}
        if any(c.__module__.startswith("s3fs") and c.__name__ == "S3FileSystem" for c in cls.__mro__):
            attrs["retries"] = 1  # s3fs reads the attribute for its call-level retry loop
            attrs.update(methods("s3", cls))
        elif any(c.__module__.startswith("gcsfs") and c.__name__ == "GCSFileSystem" for c in cls.__mro__):
            # gcsfs binds 6 retries into _request with a decorator; its undecorated function
            # is the single try (kept when a future gcsfs drops __wrapped__: then it retries)
            single = getattr(cls._request, "__wrapped__", None)
            if single is not None:
                attrs["_request"] = single
            attrs.update(methods("gcs", cls))
        out = type(cls.__name__, (cls,), {"__module__": __name__, **attrs}) if attrs else cls
        _single_try_classes[cls] = out
        return out


def filesystem(protocol: str, options: dict):
    """The filesystem for ``protocol`` and ``options`` from fsspec's instance cache (made on a
    miss: making an s3fs/gcsfs client costs ~0.3 s, too much per call)."""
    import fsspec

    try:
        cls = _single_try(fsspec.get_filesystem_class(protocol))
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"cannot open {protocol}:// URLs: {e}. For s3:// install 'distrestore[s3]', for gs:// 'distrestore[gcs]'"
        ) from e
    fs = cls(**options)
    with _made_lock:
        _made[id(fs)] = fs
        _made.move_to_end(id(fs))
        while len(_made) > MAX_FILESYSTEMS:
            _, old = _made.popitem(last=False)
            _forget(old)
    return fs


def _forget(fs) -> None:
    """Drop ``fs`` from fsspec's instance cache. fsspec has no public call for one instance: its
    cache is the class's ``_cache`` dict keyed by the instance's ``_fs_token``."""
    cache = getattr(type(fs), "_cache", None)
    token = getattr(fs, "_fs_token", None)
    if token is not None and hasattr(cache, "get") and cache.get(token) is fs:
        cache.pop(token, None)


def cached_filesystems() -> int:
    """How many filesystems distrestore keeps cached in this process (at most MAX_FILESYSTEMS)."""
    with _made_lock:
        return len(_made)
