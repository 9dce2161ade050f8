"""Output files that appear complete or not at all: written under temporary names beside their
final ones, synced, then renamed (and the directory synced); removed if anything fails."""

from __future__ import annotations

import os

from ..durable import fsync_dir, temp_name


class AtomicFiles:
    """``with AtomicFiles() as out: fd = out.open(final_path)...`` -- every opened file is written
    under a hidden temporary name in the final directory; leaving the block normally syncs and
    renames them all, an exception removes them (the final paths are never half written)."""

    def __init__(self):
        self._files: list[tuple[int, str, str]] = []  # (fd, temp path, final path)

    def open(self, final_path: str) -> int:
        """A new file's descriptor (write-only), to become ``final_path`` on success."""
        final_path = os.path.abspath(final_path)
        temp = temp_name(final_path)  # TF's debris mark, as the checkpoint writer uses
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
            fsync_dir(d)

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
