"""The C read+CRC32C kernel (``distrestore.format._readcrc``) against the ``crc32c`` package and
against the pure-Python paths it replaces (which must give identical results without it)."""

from __future__ import annotations

import os
import random

import crc32c
import numpy as np
import pytest

from distrestore import storage as storage_mod
from distrestore.errors import StorageError
from distrestore.format import crc
from distrestore.storage import Storage

readcrc = pytest.importorskip("distrestore.format._readcrc",
                              reason="C kernel not built or this CPU lacks SSE4.2/PCLMULQDQ")
KERNELS = [k for k in ("avx2-vpclmulqdq", "sse4.2-pclmul")
           if k == "sse4.2-pclmul" or readcrc.KERNEL == "avx2-vpclmulqdq"]
MiB = 1 << 20


@pytest.fixture(params=KERNELS)
def kernel(request):
    best = readcrc.KERNEL
    readcrc.use_kernel(request.param)
    yield request.param
    readcrc.use_kernel(best)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError):
        readcrc.use_kernel("no-such-kernel")


def test_crc32c_matches_package_all_lengths_alignments_continuations(kernel):
    rng = random.Random(1)
    data = rng.randbytes(4 * MiB + 64)
    lengths = list(range(0, 600)) + [rng.randrange(600, 4 * MiB) for _ in range(60)] + [4 * MiB]
    for n in lengths:
        a = rng.randrange(64)
        piece = memoryview(data)[a:a + n]
        start = rng.choice([0, 0xFFFFFFFF, rng.getrandbits(32)])
        assert readcrc.crc32c(piece, start) == crc32c.crc32c(piece, start), (kernel, n, a, start)


def test_combine_matches_python_reference(monkeypatch):
    rng = random.Random(2)
    cases = [(rng.getrandbits(32), rng.getrandbits(32), n)
             for n in [0, 1, 3, 8, 1000, 2**20 + 5, 2**40 + 3, 2**63 - 1]]
    c_values = [crc.combine(*c) for c in cases]
    monkeypatch.setattr(crc, "_readcrc", None)
    assert [crc.combine(*c) for c in cases] == c_values
    a, b = rng.randbytes(777), rng.randbytes(12345)
    assert crc.combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)


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
                want = data[pos:pos + b.nbytes]
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
        assert bytes(buf[:length // 2]) == data[start:]
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
    monkeypatch.setattr(storage_mod, "_readcrc", None)
    monkeypatch.setattr(crc, "_readcrc", None)
    slow, none = _storage_read(path, 11, sizes)
    assert none is None and slow == fast
    assert b"".join(fast) == data[11:11 + sum(sizes)]
    assert [crc.value(b) for b in slow] == crcs


@pytest.mark.parametrize("kernel_built", [True, False], ids=["kernel", "python"])
def test_storage_truncated_file_is_a_storage_error_either_way(blob, monkeypatch, kernel_built):
    path, data = blob
    if not kernel_built:
        monkeypatch.setattr(storage_mod, "_readcrc", None)
    with pytest.raises(StorageError, match="truncated"):
        Storage().readinto(path, len(data) - 10, [bytearray(2 * MiB)])


def test_python_fallback_continues_after_partial_reads(blob, monkeypatch):
    """os.preadv may return less than asked (signals, some filesystems): the rest follows."""
    path, data = blob
    monkeypatch.setattr(storage_mod, "_readcrc", None)
    real = os.preadv

    def short(fd, views, pos):
        got = real(fd, views, pos)
        return min(got, 1000)  # pretend only the first 1000 bytes arrived (they did, and more)

    monkeypatch.setattr(storage_mod.os, "preadv", short)
    bufs = [bytearray(700), bytearray(2500), bytearray(0), bytearray(1)]
    Storage().readinto(path, 5, bufs)
    assert b"".join(bufs) == data[5:5 + 3201]
