"""The mapped read (``distrestore._native._mapped_read``, facade ``_native.mapped_read``): buffers
filled and checksummed in one pass, against the ``crc32c`` package and against the ``os.preadv``
path that Storage takes without it (identical results); a file truncated during a mapped copy
(SIGBUS) becomes an error; the SIGBUS handler exists only while a copy runs."""

from __future__ import annotations

import os
import random
import re

import crc32c
import numpy as np
import pytest

from distrestore._native import mapped_read
from distrestore.errors import StorageError
from distrestore.format import crc
from distrestore.storage import Storage
from distrestore.storage import local as storage_mod

readcrc = pytest.importorskip(
    "distrestore._native._mapped_read", reason="C kernel not built or this CPU lacks SSE4.2/PCLMULQDQ"
)
checksum = pytest.importorskip("distrestore._native._checksum")
pytest_plugins = ["native_kernels"]  # the `kernel` fixture: each CRC32C kernel of this CPU
MiB = 1 << 20


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    data = np.random.default_rng(3).integers(0, 256, 9 * MiB + 123, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("readcrc") / "blob.bin"
    path.write_bytes(data)
    return str(path), data


def _split(rng, total):
    """Random buffer sizes summing to total: empty ones, tiny ones, big ones."""
    sizes = []
    while total:
        n = min(total, rng.choice([0, 1, 7, 100, 4096, rng.randrange(1, 3 * MiB)]))
        sizes.append(n)
        total -= n
    return sizes


@pytest.mark.parametrize("mapped", [False, True], ids=["preadv", "mapped"])
def test_read_fills_buffers_and_returns_their_crcs(blob, kernel, mapped):
    path, data = blob
    rng = random.Random(4)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(12):
            length = rng.randrange(1 << 20, 4 * MiB) if mapped else rng.randrange(0, (1 << 20) - 1)
            start = rng.randrange(0, len(data) - length)
            sizes = _split(rng, length)
            bufs = [np.empty(n, np.uint8) for n in sizes]
            got = readcrc.read(fd, start, [memoryview(b) for b in bufs])
            pos = start
            for b, c in zip(bufs, got):
                want = data[pos : pos + b.nbytes]
                assert b.tobytes() == want
                assert c == crc32c.crc32c(want)
                pos += b.nbytes
    finally:
        os.close(fd)


@pytest.mark.parametrize("length", [1000, 3 * MiB])
def test_read_past_end_of_file_fills_what_exists_and_raises_eof(blob, length):
    path, data = blob
    start = len(data) - length // 2
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(b"\xee" * length)
        with pytest.raises(EOFError, match=f"end of file at byte {len(data)}"):
            readcrc.read(fd, start, [buf])
        assert bytes(buf[: length // 2]) == data[start:]
    finally:
        os.close(fd)


def test_read_rejects_readonly_buffers_and_reports_os_errors(blob):
    path, _ = blob
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BufferError):
            readcrc.read(fd, 0, [b"immutable"])
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        readcrc.read(fd, 0, [bytearray(8)])  # closed descriptor: EBADF


def _storage_read(path, start, sizes):
    bufs = [np.empty(n, np.uint8) for n in sizes]
    crcs = Storage().readinto(path, start, bufs)
    return [b.tobytes() for b in bufs], crcs


@pytest.mark.parametrize("sizes", [[5, 0, 1 << 20, 3 * MiB, 17], [4096] * 5, [0, 0, 9]])
def test_storage_reads_the_same_with_and_without_the_kernel(blob, monkeypatch, sizes):
    path, data = blob
    fast, crcs = _storage_read(path, 11, sizes)
    assert crcs == [crc32c.crc32c(b) for b in fast]
    monkeypatch.setattr(mapped_read, "available", False)
    monkeypatch.setattr(crc, "native", None)
    slow, none = _storage_read(path, 11, sizes)
    assert none is None and slow == fast
    assert b"".join(fast) == data[11 : 11 + sum(sizes)]
    assert [crc.value(b) for b in slow] == crcs


@pytest.mark.parametrize("kernel_built", [True, False], ids=["kernel", "python"])
def test_storage_truncated_file_is_a_storage_error_either_way(blob, monkeypatch, kernel_built):
    path, data = blob
    if not kernel_built:
        monkeypatch.setattr(mapped_read, "available", False)
    with pytest.raises(StorageError, match="truncated"):
        Storage().readinto(path, len(data) - 10, [bytearray(2 * MiB)])


def test_python_fallback_continues_after_partial_reads(blob, monkeypatch):
    """os.preadv may return less than asked (signals, some filesystems): the rest follows."""
    path, data = blob
    monkeypatch.setattr(mapped_read, "available", False)
    real = os.preadv

    def short(fd, views, pos):
        got = real(fd, views, pos)
        return min(got, 1000)  # pretend only the first 1000 bytes arrived (they did, and more)

    monkeypatch.setattr(os, "preadv", short)
    bufs = [bytearray(700), bytearray(2500), bytearray(0), bytearray(1)]
    Storage().readinto(path, 5, bufs)
    assert b"".join(bufs) == data[5 : 5 + 3201]


# -- a file truncated by someone else during a mapped read (SIGBUS) ------------------------------


def _truncating_read(path, start, length, truncate_to, *, block_sigbus=False):
    """One mapped read of [start, start + length) during which the file shrinks to truncate_to
    (between populating the mapping and copying from it: the test hook makes the race certain)."""
    import signal

    fd, wfd = os.open(path, os.O_RDONLY), os.open(path, os.O_WRONLY)
    try:
        if block_sigbus:  # a thread that blocks SIGBUS must not be killed by the fault either
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGBUS})
        readcrc._test_truncate_next(wfd, truncate_to)
        try:
            readcrc.read(fd, start, [bytearray(length)])
        finally:
            if block_sigbus:
                assert signal.SIGBUS in signal.pthread_sigmask(signal.SIG_SETMASK, old)
    finally:
        os.close(fd)
        os.close(wfd)


@pytest.fixture
def sigbus_guard(tmp_path):
    """Our SIGBUS handler in front. In the whole suite another one may be there by now (Ray's
    crash handler, installed by ray.init after our first read), and then the kernel reads with
    preadv: put SIG_DFL there for the test (the next mapped read installs ours over it) and the
    disposition found back afterwards, as raw struct sigaction bytes."""
    import ctypes
    import signal

    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (5, 14):  # no MADV_POPULATE_READ: the kernel never maps, nothing to truncate
        pytest.skip(f"Linux {os.uname().release} has no MADV_POPULATE_READ")
    path = tmp_path / "probe.bin"
    path.write_bytes(bytes(2 * MiB))
    try:
        _truncating_read(str(path), 0, 2 * MiB, 0)
    except EOFError:  # ours is in front
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    dfl, saved = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)  # > sizeof
    assert libc.sigaction(signal.SIGBUS, dfl, saved) == 0  # all zero: SIG_DFL
    try:
        yield
    finally:
        assert libc.sigaction(signal.SIGBUS, saved, None) == 0


@pytest.mark.parametrize("truncate_to", [0, 2 * MiB, 2 * MiB + 5])
def test_truncation_during_mapped_read_is_eof_error_not_sigbus(tmp_path, kernel, truncate_to, sigbus_guard):
    data = np.random.default_rng(5).integers(0, 256, 6 * MiB, dtype=np.uint8).tobytes()
    path = tmp_path / "shrinking.bin"
    path.write_bytes(data)
    # the first byte the copy touches in a page past the new end of file
    at = max(4096 + 17, -(-truncate_to // 4096) * 4096)
    with pytest.raises(
        EOFError, match=f"file truncated while reading, at byte {at} \\(the file now has {truncate_to} bytes\\)"
    ):
        _truncating_read(str(path), 4096 + 17, 4 * MiB, truncate_to)
    # the process and the handler are fine: a next read works, and a next truncation fails again
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(3 * MiB)
        assert readcrc.read(fd, 100, [buf]) == [crc32c.crc32c(data[100 : 100 + 3 * MiB])]
        assert bytes(buf) == data[100 : 100 + 3 * MiB]
    finally:
        os.close(fd)
    with pytest.raises(EOFError, match="truncated while reading"):
        _truncating_read(str(path), 0, 3 * MiB, truncate_to)


def test_truncation_during_mapped_read_in_threads_and_with_sigbus_blocked(tmp_path, sigbus_guard):
    import concurrent.futures

    def one(i, block):
        path = tmp_path / f"t{i}.bin"
        path.write_bytes(bytes(4 * MiB))
        try:
            _truncating_read(str(path), 0, 4 * MiB, MiB, block_sigbus=block)
        except EOFError as e:
            return str(e)
        return "no error"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for i, block in enumerate([False, True]):  # one after the other: the hook is one-shot
            got = pool.submit(one, i, block).result()
            assert got == f"file truncated while reading, at byte {MiB} (the file now has {MiB} bytes)"


def test_storage_reports_truncation_during_read_as_permanent_storage_error(tmp_path, monkeypatch, sigbus_guard):
    path = tmp_path / "shrinking.data"
    path.write_bytes(bytes(5 * MiB))
    wfd = os.open(path, os.O_WRONLY)
    calls = []
    real = storage_mod.LocalStorage.read_attempt
    monkeypatch.setattr(storage_mod.LocalStorage, "read_attempt", lambda self, *a: calls.append(1) or real(self, *a))
    try:
        readcrc._test_truncate_next(wfd, 3 * MiB)
        with pytest.raises(
            StorageError,
            match=rf"shrinking.data bytes \[1024, {1024 + 4 * MiB}\).*"
            rf"file truncated while reading, at byte {3 * MiB}",
        ):
            Storage().readinto(str(path), 1024, [bytearray(4 * MiB)])
    finally:
        os.close(wfd)
    assert len(calls) == 1  # permanent: not retried


# an unrelated SIGBUS (not in a guarded copy) must reach the disposition that was there before us
_UNRELATED = r"""
import faulthandler, mmap, os, signal, sys
from distrestore._native import _mapped_read as _readcrc
mode, path = sys.argv[1], sys.argv[2]
if mode == "faulthandler-before":
    faulthandler.enable()
if mode == "ignored":
    signal.signal(signal.SIGBUS, signal.SIG_IGN)
with open(path, "wb") as f:
    f.write(bytes(4 << 20))
fd, wfd = os.open(path, os.O_RDONLY), os.open(path, os.O_WRONLY)
_readcrc.read(fd, 0, [bytearray(2 << 20)])  # a mapped read: its handler comes and goes
if mode == "faulthandler-after":
    faulthandler.enable()  # what ours replaces, during the next read, and chains to
if mode == "faulthandler-disabled":
    faulthandler.enable()
    faulthandler.disable()
_readcrc._test_truncate_next(wfd, 1 << 20)
try:
    _readcrc.read(fd, 0, [bytearray(2 << 20)])
    print("no truncation (preadv)", flush=True)
except EOFError as e:
    print("guarded:", e, flush=True)
os.pwrite(wfd, bytes(4 << 20), 0)  # whole again
if mode == "kill":
    os.kill(os.getpid(), signal.SIGBUS)
    print("survived kill", flush=True)
    sys.exit(0)
if mode == "ignored":
    os.kill(os.getpid(), signal.SIGBUS)  # ignored, as before us
    print("ignored kill", flush=True)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
os.ftruncate(wfd, 0)
print("touching", flush=True)
m[3 << 20]  # SIGBUS outside any guarded copy
print("survived fault", flush=True)
"""


@pytest.mark.parametrize(
    "mode", ["default", "faulthandler-before", "faulthandler-after", "faulthandler-disabled", "ignored", "kill"]
)
def test_unrelated_sigbus_still_kills_the_process(tmp_path, mode):
    import signal
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", _UNRELATED, mode, str(tmp_path / "f.bin")], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stdout, p.stderr)
    assert "guarded: file truncated while reading, at byte 1048576" in p.stdout
    assert "survived" not in p.stdout
    if mode == "ignored":
        assert "ignored kill" in p.stdout
    if mode in ("faulthandler-before", "faulthandler-after"):
        assert "Fatal Python error: Bus error" in p.stderr
    else:
        assert "Fatal Python error" not in p.stderr


# the disposition of SIGBUS, as raw struct sigaction bytes, around reads in a fresh process
_DISPOSITION = r"""
import ctypes, faulthandler, os, signal, sys, threading
from distrestore._native import _mapped_read
libc = ctypes.CDLL(None, use_errno=True)

def disposition():
    # glibc's x86-64 struct sigaction: handler (8 bytes), sa_mask (128, of which the kernel
    # fills 8), sa_flags (int) at 136; the rest (restorer, padding) says nothing about who handles
    buf = ctypes.create_string_buffer(256)
    assert libc.sigaction(signal.SIGBUS, None, buf) == 0
    flags = int.from_bytes(buf.raw[136:140], "little") & ~0x04000000  # SA_RESTORER: glibc's own
    return buf.raw[:16], flags

if sys.argv[1] == "faulthandler":
    faulthandler.enable()
before = disposition()
path = sys.argv[2]
with open(path, "wb") as f:
    f.write(bytes(8 << 20))
fd, wfd = os.open(path, os.O_RDONLY), os.open(path, os.O_WRONLY)
threads = [threading.Thread(target=_mapped_read.read, args=(fd, 0, [bytearray(4 << 20)])) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("after reads:", disposition() == before, flush=True)
_mapped_read._test_truncate_next(wfd, 1 << 20)
try:
    _mapped_read.read(fd, 0, [bytearray(4 << 20)])
except EOFError as e:
    print("guarded:", e, flush=True)
print("after a caught SIGBUS:", disposition() == before, flush=True)
"""


@pytest.mark.parametrize("before", ["default", "faulthandler"])
def test_no_sigbus_handler_stays_installed_after_reads(tmp_path, before):
    import subprocess
    import sys

    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (5, 14):
        pytest.skip(f"Linux {os.uname().release} has no MADV_POPULATE_READ")
    p = subprocess.run(
        [sys.executable, "-c", _DISPOSITION, before, str(tmp_path / "f.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "after reads: True" in p.stdout
    assert "guarded: file truncated while reading, at byte 1048576" in p.stdout
    assert "after a caught SIGBUS: True" in p.stdout
