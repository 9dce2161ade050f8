"""Output files that appear complete or not at all: written under temporary names beside their
final ones, synced, then renamed (and the directory synced); removed if anything fails."""

from __future__ import annotations

import os
import uuid


class AtomicFiles:
    """``with AtomicFiles() as out: fd = out.open(final_path)...`` -- every opened file is written
    under a hidden temporary name in the final directory; leaving the block normally syncs and
    renames them all, an exception removes them (the final paths are never half written)."""

    def __init__(self):
        self._files: list[tuple[int, str, str]] = []  # (fd, temp path, final path)

    def open(self, final_path: str) -> int:
        """A new file's descriptor (write-only), to become ``final_path`` on success."""
        final_path = os.path.abspath(final_path)
        directory, base = os.path.split(final_path)
        temp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._files.append((fd, temp, final_path))
        return fd

    def write_text(self, final_path: str, text: str) -> None:
        fd = self.open(final_path)
        write_at(fd, text.encode("utf-8"), 0)

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        directories = set()
        try:
            for fd, _, _ in self._files:
                os.fsync(fd)
        except BaseException:
            self.abort()
            raise
        for fd, temp, final in self._files:
            os.close(fd)
            os.replace(temp, final)
            directories.add(os.path.dirname(final))
        self._files = []
        for d in directories:
            _fsync_dir(d)

    def abort(self) -> None:
        for fd, temp, _ in self._files:
            try:
                os.close(fd)
            except OSError:
                pass
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        self._files = []


def write_at(fd: int, data, offset: int) -> None:
    """``pwrite`` all of ``data`` (a bytes-like object) at ``offset``."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is done regardless
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
