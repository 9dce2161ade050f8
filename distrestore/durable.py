"""Publishing one bundle's files so that a kill or a failure at any point loses nothing that was right.

Readers open ``prefix.index`` first and follow it to ``prefix.data-i-of-N``, so the index is the
commit point: data files are made complete first, the index last. On a local filesystem each file
is written (or hard-linked) under a temporary name (``<name>.tempstate<random>``, the debris
pattern TF's own writer uses), fsynced, then renamed into place, and the directory is fsynced
before the next step, so the order holds across a power loss too. Object stores have atomic
single-object PUTs and no rename: objects are written at their final names, the index last.

Data-file names are fixed by the prefix and shard count. When the new files would replace the
ones an existing index names (same prefix, same count, or an index that cannot be read), that
index is removed before the first of them is replaced: no index ever points at data it was not
written with, so a reader sees the old bundle, the new one, or no index — never a mix. The whole
protocol, and what a kill at each step leaves, is in ``docs/writes.md``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator

from .errors import CheckpointNotFoundError, DistRestoreError, StorageError
from .index import CheckpointIndex
from .storage import Storage, dirname, local_path
from .storage.base import COPY_CHUNK

TEMP_MARK = ".tempstate"  # TF's mark for writer debris: readers never open such files
# os.link refusals that mean "copy instead": another filesystem, or one without hard links
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def data_file_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def temp_name(path: str) -> str:
    return f"{path}{TEMP_MARK}{uuid.uuid4().int & (2**63 - 1)}"


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: str) -> None:
    """``os.makedirs``, with each directory it creates made durable in its parent."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(os.path.dirname(d))


def _replace(tmp: str, final: str) -> None:
    try:
        same = os.path.samestat(os.stat(tmp), os.stat(final))
    except FileNotFoundError:
        same = False
    if same:  # rename() between two links of one file does nothing and leaves both
        os.remove(tmp)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def _io(what: str, path: str):
    """OS errors of the write path as StorageError naming the step and file."""
    try:
        yield
    except DistRestoreError:
        raise
    except OSError as e:
        raise StorageError(f"{what} {path} failed: {type(e).__name__}: {e}") from e


def _remove_quietly(storage: Storage, path: str) -> None:
    try:
        if storage.local:
            os.remove(local_path(path))
        else:
            storage.remove(path)
    except (OSError, DistRestoreError):
        pass


def _same_store(a: Storage, b: Storage) -> bool:
    return a.protocol == b.protocol and a.storage_options == b.storage_options


def _pieces(src_storage: Storage, src: str) -> Iterator[bytes]:
    """The bytes of ``src`` in bounded pieces (each read retried by its storage)."""
    size = src_storage.size(src)
    for start in range(0, size, COPY_CHUNK):
        yield src_storage.read(src, start, min(size, start + COPY_CHUNK))


class BundlePublisher:
    """Writes the bundle ``prefix`` with ``num_shards`` data files; use as a context manager.

    Stage every data file with :meth:`write_data` or :meth:`place_data`, then :meth:`commit` the
    index. Leaving the block with an exception before the commit removes everything staged.
    """

    def __init__(self, prefix: str, num_shards: int, storage: Storage):
        self.prefix = prefix
        self.num_shards = num_shards
        self.storage = storage
        self.index = prefix + ".index"
        self._dir = local_path(dirname(prefix)) if storage.local else dirname(prefix)
        self._temps: dict[str, str] = {}  # final name -> temporary name (local only)
        self._placed: list[str] = []  # files at final names before the commit
        self._committed = False
        self._replaces_index = False

    def data_file(self, shard: int) -> str:
        return data_file_name(self.prefix, shard, self.num_shards)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> BundlePublisher:
        if self.storage.local:
            with _io("creating directory", self._dir):
                _makedirs(self._dir or ".")
        elif self._dir:
            self.storage.makedirs(self._dir)
        self._replaces_index = self._old_index_names_new_files()
        if self._replaces_index and not self.storage.local:
            self._remove_old_index()  # data objects go straight to their final names
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._committed:
            for path in [*self._temps.values(), *self._placed]:
                _remove_quietly(self.storage, path)

    def _old_index_names_new_files(self) -> bool:
        """Whether an index at this prefix names (or may name) the files about to be written."""
        try:
            return CheckpointIndex.open(self.prefix, self.storage).header.num_shards == self.num_shards
        except CheckpointNotFoundError:
            return False
        except DistRestoreError:
            return True  # unreadable already: it goes first, a reader then finds no index

    def _remove_old_index(self) -> None:
        with _io("removing the old index", self.index):
            if self.storage.local:
                try:
                    os.remove(local_path(self.index))
                except FileNotFoundError:
                    pass
                fsync_dir(self._dir)
            else:
                self.storage.remove(self.index)

    # -- staging data files ------------------------------------------------------------------

    def write_data(self, shard: int, chunks: Callable[[], Iterable]) -> None:
        """Write data file ``shard`` from the pieces ``chunks()`` yields (bytes-like); complete
        (and fsynced) on return. On an object store the upload is retried as a whole, each
        attempt calling ``chunks()`` again: it must yield the same bytes every time."""
        final = self.data_file(shard)
        if not self.storage.local:
            self._placed.append(final)  # before the upload: removed again if the write fails
            with _io("writing", final):
                self.storage.upload(final, chunks)
            return
        tmp = self._temps[final] = temp_name(final)
        with _io("writing", final), open(local_path(tmp), "wb") as f:
            for chunk in chunks():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())

    def place_data(self, shard: int, src_storage: Storage, src: str) -> None:
        """Make data file ``shard`` hold the bytes of ``src``, leaving ``src`` untouched: a hard
        link where the filesystem allows, a server-side copy within one object store, a streamed
        copy otherwise. Copies into an object store are retried as a whole (each writes one
        whole object)."""
        final = self.data_file(shard)
        if not self.storage.local:
            self._placed.append(final)
            with _io("copying", f"{src} to {final}"):
                try:
                    if _same_store(src_storage, self.storage):
                        self.storage.copy(src, final)
                    else:
                        self.storage.upload(final, lambda: _pieces(src_storage, src))
                except FileNotFoundError:
                    raise CheckpointNotFoundError(f"data file not found: {src}") from None
            return
        tmp = self._temps[final] = temp_name(final)
        with _io("linking", f"{src} to {final}"):
            if src_storage.local:
                try:
                    os.link(local_path(src), local_path(tmp))
                except FileNotFoundError:
                    raise CheckpointNotFoundError(f"data file not found: {src}") from None
                except OSError as e:
                    if e.errno not in _NO_LINK:
                        raise
                    shutil.copyfile(local_path(src), local_path(tmp))
                # a linked file shares the source's pages: make them durable before anything
                # (a deleted source included) relies on them
                _fsync_file(local_path(tmp))
            else:
                with open(local_path(tmp), "wb") as out:
                    for piece in _pieces(src_storage, src):
                        out.write(piece)
                    out.flush()
                    os.fsync(out.fileno())

    # -- the commit ----------------------------------------------------------------------------

    def commit(self, index_bytes: bytes) -> None:
        """Publish: (the old index out of the way,) data files into place, then the index."""
        if not self.storage.local:
            with _io("writing", self.index):
                self.storage.write_bytes(self.index, index_bytes)
            self._committed = True
            self._remove_stale_data_files()
            return
        if self._replaces_index:
            self._remove_old_index()
        with _io("renaming data files to", self.prefix + ".data-*"):
            for final, tmp in list(self._temps.items()):
                _replace(local_path(tmp), local_path(final))
                del self._temps[final]
                self._placed.append(final)
            fsync_dir(self._dir)
        tmp = self._temps[self.index] = temp_name(self.index)
        with _io("writing", self.index):
            with open(local_path(tmp), "wb") as f:
                f.write(index_bytes)
                f.flush()
                os.fsync(f.fileno())
            os.replace(local_path(tmp), local_path(self.index))
            del self._temps[self.index]
            self._committed = True
            fsync_dir(self._dir)
        self._remove_stale_data_files()

    def _remove_stale_data_files(self) -> None:
        """Best effort: data files of this prefix with another shard count. No index can name
        them any more (the prefix's one index now says ``num_shards``); they are what an
        overwritten bundle, or an earlier killed write, left behind."""
        try:
            found = existing_data_files(self.prefix, self.storage)
        except (OSError, DistRestoreError):
            return
        for path, _, num_shards in found:
            if num_shards != self.num_shards:
                _remove_quietly(self.storage, path)


_DATA_NAME = re.compile(r"\.data-(\d{5,})-of-(\d{5,})")


def existing_data_files(prefix: str, storage: Storage) -> list[tuple[str, int, int]]:
    """``(path, shard, num_shards)`` of every file named like a data file of ``prefix``
    (``<prefix>.data-SSSSS-of-NNNNN``) that exists: listed, never built from a shard count an
    index claims (a hostile one can claim 10^7)."""
    parent = dirname(prefix)
    sep = os.sep if storage.local else "/"
    base = prefix[len(parent) :].lstrip(sep)
    if storage.local:
        names = os.listdir(local_path(parent) or ".")
    else:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in storage.glob(glob.escape(prefix) + ".data-*")]
    out = []
    for name in sorted(names):
        m = _DATA_NAME.fullmatch(name[len(base) :]) if name.startswith(base) else None
        if m:
            path = os.path.join(local_path(parent), name) if storage.local else f"{parent}/{name}"
            out.append((path, int(m.group(1)), int(m.group(2))))
    return out


def delete_bundle(prefix: str, num_shards: int, storage: Storage) -> None:
    """Remove a bundle: its index first (what readers open), then every data file of its
    ``num_shards`` that exists — those its entries use and any other, so nothing of the bundle
    is left — so a reader never finds an index that names a removed file. Files already gone
    are skipped."""
    with _io("removing", prefix + ".index"):
        try:
            if storage.local:
                os.remove(local_path(prefix + ".index"))
                fsync_dir(local_path(dirname(prefix)))
            else:
                storage.remove(prefix + ".index")
        except FileNotFoundError:
            pass
    with _io("listing the data files of", prefix):
        found = existing_data_files(prefix, storage)
    for path, shard, n in found:
        if n != num_shards or shard >= num_shards:
            continue
        with _io("removing", path):
            try:
                if storage.local:
                    os.remove(local_path(path))
                else:
                    storage.remove(path)
            except FileNotFoundError:
                pass
