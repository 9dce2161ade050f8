"""Shared-memory arenas: destination buffers that other processes on this machine write into.

An :class:`Arena` is one file in ``/dev/shm`` (tmpfs), sized for a restore's destination buffers.
The driver maps it and hands out numpy arrays that are views of it; read workers on the same
machine open the file and ``pwrite`` into it by offset, so their bytes land in the driver's
arrays with no copy in between. Writers use the file, not a mapping: a write fault in a tmpfs
mapping costs 4 KiB at a time (tmpfs gets no transparent huge pages by default), which made
``preadv`` into a mapping 2.2 x slower than into anonymous memory, while ``pwrite`` into the file
is as fast as that.

Memory goes back as the arrays die: every big allocation has a mapping of its own, and when the
last view of it is gone its range of the file is punched out (``fallocate``); the small ones
share one mapping. The name is unlinked as soon as every writer has opened the file, so a
crashed process leaves nothing behind in ``/dev/shm``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import uuid
import weakref
from collections.abc import Hashable, Iterable, Mapping

import numpy as np

__all__ = ["SHM_DIR", "Arena", "free_bytes"]

SHM_DIR = "/dev/shm"
_BIG = 1 << 20  # allocations this size or more get their own mapping, freed as soon as it dies
_ALIGN = 64  # of small allocations: any dtype's alignment, and no cache line shared
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc = None


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged process may still allocate in ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _c():
    """libc's mmap, munmap and fallocate: ``mmap.mmap`` keeps a duplicate descriptor per mapping
    (thousands of tensors would run out of them) and cannot say when its last view dies."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc = libc
    return _libc


def _release(file: _File, address: int, offset: int, length: int) -> None:
    """Unmap a range whose last view died, and give its memory back to the system at once
    (punching it out of the file; the rest of the arena may live on)."""
    _c().munmap(address, length)
    _c().fallocate(file.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)


class _File:
    """The arena's descriptor, kept open while any mapping of it lives (they punch through it)."""

    def __init__(self, fd: int):
        self.fd = fd
        weakref.finalize(self, os.close, fd)


class Arena:
    """One shared-memory file laid out for the buffers named by ``sizes`` (key -> bytes).

    Create it with :meth:`create` (None when the file system has too little room). ``path``
    names the file (until :meth:`unlink`); ``offsets[key]`` is where a buffer's bytes start in it.
    """

    def __init__(self, sizes: Mapping[Hashable, int], directory: str = SHM_DIR):
        self.offsets: dict[Hashable, int] = {}
        self._sizes = dict(sizes)
        pos = 0
        for key, n in self._sizes.items():  # the small ones first, in one mapping
            if n < _BIG:
                self.offsets[key] = pos
                pos += -n % _ALIGN + n
        self._small_end = pos = -pos % mmap.ALLOCATIONGRANULARITY + pos
        for key, n in self._sizes.items():
            if n >= _BIG:
                self.offsets[key] = pos
                pos += -n % mmap.ALLOCATIONGRANULARITY + n
        self.size = pos
        self.path = os.path.join(directory, f"distrestore-{os.getpid()}-{uuid.uuid4().hex}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = _File(fd)
        # also on an error, a dropped arena or the interpreter's exit, the name never outlives it
        self._unlinker = weakref.finalize(self, _unlink, self.path)
        try:
            os.ftruncate(fd, self.size)
        except BaseException:
            self.unlink()
            raise
        self._small: np.ndarray | None = None

    @classmethod
    def create(cls, sizes: Mapping[Hashable, int], directory: str = SHM_DIR) -> Arena | None:
        """An arena for ``sizes``, or None where ``directory`` is missing or has too little free
        room (containers often give /dev/shm 64 MiB; running it full would fail the writers)."""
        need = sum(sizes.values())
        try:
            if free_bytes(directory) < need + need // 8 + (16 << 20):
                return None
            _c()
            return cls(sizes, directory)
        except (OSError, AttributeError):  # no such directory, or no libc mmap (not Linux)
            return None

    def allocate(self, key: Hashable, nbytes: int) -> np.ndarray | None:
        """A writable uint8 view of ``key``'s bytes (None for a key the arena has no room for)."""
        off = self.offsets.get(key)
        if off is None or self._sizes[key] < nbytes:
            return None
        if nbytes == 0:
            return np.empty(0, np.uint8)
        if nbytes < _BIG:
            if self._small is None:
                self._small = self._map(0, self._small_end)
            return self._small[off : off + nbytes]
        return self._map(off, nbytes)

    def _map(self, offset: int, length: int) -> np.ndarray:
        address = _c().mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, self._file.fd, offset)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {length} bytes of {self.path}: {os.strerror(err)}")
        owner = (ctypes.c_char * length).from_address(address)  # every view keeps it alive
        weakref.finalize(owner, _release, self._file, address, offset, length)
        return np.frombuffer(owner, np.uint8)

    def reserve(self, keys: Iterable[Hashable]) -> None:
        """Allocate the memory of these buffers now: the driver writes into them through its
        mapping, where a full tmpfs would kill it with SIGBUS instead of raising an error."""
        for key in keys:
            if self._sizes.get(key):
                os.posix_fallocate(self._file.fd, self.offsets[key], self._sizes[key])

    def write(self, offset: int, data) -> None:
        """Write bytes at ``offset`` through the file (a full tmpfs raises ENOSPC here)."""
        write_all(self._file.fd, memoryview(data).cast("B"), offset)

    def unlink(self) -> None:
        """Remove the file's name (``path`` stays as the arena's key); the memory stays while
        arrays and open descriptors do."""
        self._unlinker()


def write_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote nothing at offset {offset}")
        view = view[n:]
        offset += n


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
