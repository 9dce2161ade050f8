"""Local files: ranges read straight into the caller's buffers.

With the C kernel (``_native.mapped_read``), a range of 1 MiB or more is copied from a
mapping of the page cache by a loop that CRC32C-checksums the bytes it moves (no more CPU time
than ``preadv`` without checksums: docs/native.md), and the checksums are returned; without it (not
built, or a CPU without SSE4.2/PCLMULQDQ), with ``os.preadv``. Local reads take no time limit:
a disk does not stall the way a network does.
"""

from __future__ import annotations

import glob
import os

from .._native import mapped_read
from .base import Storage
from .paths import local_path

_IOV_MAX = 1024


class LocalStorage(Storage):
    """Paths and ``file://`` URLs on this machine."""

    local = True

    def __init__(self, protocol: str = "file", storage_options=None, retry=None, **limits):
        super().__init__("file", storage_options, retry, **limits)

    def read_attempt(self, url, start, views, limit=None):
        fd = os.open(local_path(url), os.O_RDONLY)
        try:
            if mapped_read.available:  # same partial-read and end-of-file behaviour as below
                return mapped_read.read(fd, start, views)
            return _preadv(fd, start, list(views))
        finally:
            os.close(fd)

    def read_all_attempt(self, url, limit=None) -> bytes:
        with open(local_path(url), "rb") as f:
            return f.read()

    def size_attempt(self, url, limit=None) -> int:
        return os.stat(local_path(url)).st_size

    def exists_attempt(self, url, limit=None) -> bool:
        return os.path.exists(local_path(url))

    def isdir_attempt(self, url, limit=None) -> bool:
        return os.path.isdir(local_path(url))

    def glob_attempt(self, pattern, limit=None) -> list[str]:
        return glob.glob(local_path(pattern))

    def write_attempt(self, url, data, limit=None) -> None:
        with open(local_path(url), "wb") as f:
            f.write(data)

    def open_write(self, url):
        return open(local_path(url), "wb")

    def makedirs_attempt(self, url, limit=None) -> None:
        os.makedirs(local_path(url) or ".", exist_ok=True)

    def rename_attempt(self, src, dst, limit=None) -> None:
        os.replace(local_path(src), local_path(dst))

    def remove_attempt(self, url, limit=None) -> None:
        os.remove(local_path(url))


def _preadv(fd: int, start: int, views: list[memoryview]) -> None:
    """Fill ``views`` from ``start`` with ``preadv``, going on after partial reads (``views`` is
    trimmed as it fills; a retry starts from the caller's own list)."""
    pos, i = start, 0
    while i < len(views):
        batch = views[i : i + _IOV_MAX]
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
