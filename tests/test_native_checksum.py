"""The native CRC32C (``distrestore._native._checksum``, facade ``format.crc``): every kernel
against the ``crc32c`` package, ``combine``, the batched check and the copy with checksums against
their pure-Python fallbacks (identical results), and the capsule the mapped read uses."""

from __future__ import annotations

import random

import crc32c
import numpy as np
import pytest

from distrestore.format import crc

checksum = pytest.importorskip(
    "distrestore._native._checksum", reason="native module not built or this CPU lacks SSE4.2/PCLMULQDQ"
)
pytest_plugins = ["native_kernels"]  # the `kernel` fixture: each CRC32C kernel of this CPU
MiB = 1 << 20


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError):
        checksum.use_kernel("no-such-kernel")


def test_crc32c_matches_package_all_lengths_alignments_continuations(kernel):
    rng = random.Random(1)
    data = rng.randbytes(4 * MiB + 64)
    lengths = list(range(0, 600)) + [rng.randrange(600, 4 * MiB) for _ in range(60)] + [4 * MiB]
    for n in lengths:
        a = rng.randrange(64)
        piece = memoryview(data)[a : a + n]
        start = rng.choice([0, 0xFFFFFFFF, rng.getrandbits(32)])
        assert checksum.crc32c(piece, start) == crc32c.crc32c(piece, start), (kernel, n, a, start)


def test_combine_matches_python_reference(monkeypatch):
    rng = random.Random(2)
    cases = [(rng.getrandbits(32), rng.getrandbits(32), n) for n in [0, 1, 3, 8, 1000, 2**20 + 5, 2**40 + 3, 2**63 - 1]]
    c_values = [crc.combine(*c) for c in cases]
    monkeypatch.setattr(crc, "native", None)
    assert [crc.combine(*c) for c in cases] == c_values
    a, b = rng.randbytes(777), rng.randbytes(12345)
    assert crc.combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)


def _pieces(rng, sizes, gaps=True):
    sizes = np.asarray(sizes, np.int64)
    offsets = (np.cumsum(sizes) - sizes + (rng.integers(0, 3, len(sizes)) if gaps else 0)).astype(np.int64)
    buf = rng.integers(0, 256, int((offsets + sizes).max()) if len(sizes) else 0, dtype=np.uint8)
    masked = np.array([crc.mask(crc32c.crc32c(buf[o : o + s])) for o, s in zip(offsets, sizes)], np.uint32)
    return buf, offsets, sizes, masked


@pytest.mark.parametrize(
    "sizes",
    [[16] * 40, [511, 512, 513] * 10, [3, 5000, 7, 4096, 0, 100_000, 600], [0] * 7, [1] * 3 + [70_000] * 4],
    ids=["small", "around-fold-threshold", "mixed", "empty", "big"],
)
def test_batched_check_agrees_with_python_on_every_size_class(kernel, monkeypatch, sizes):
    """Three-way interleaved pieces, folded big pieces, and every position of a bad one."""
    rng = np.random.default_rng(len(sizes))
    buf, offsets, sizes, masked = _pieces(rng, sizes)
    assert checksum.first_mismatch(buf, offsets, sizes, masked) == -1
    for bad in range(len(sizes)):
        m = masked.copy()
        m[bad] ^= 1 << int(rng.integers(0, 32))
        assert checksum.first_mismatch(buf, offsets, sizes, m) == bad
        with monkeypatch.context() as p:
            p.setattr(crc, "native", None)
            assert crc.first_mismatch(buf, offsets, sizes, m) == bad


def test_batched_check_refuses_pieces_outside_the_buffer(monkeypatch):
    """A piece past the buffer's end (or with a negative offset or size, or whose end wraps) is
    the mismatch, natively and in Python: never a read outside the buffer."""
    buf = np.zeros(100, np.uint8)
    good = crc.mask(crc32c.crc32c(bytes(10)))
    for offset, size in [(95, 10), (-1, 5), (0, -1), (2**62, 2**62), (100, 1), (50, 2**63 - 40)]:
        offsets = np.array([0, 0, 0, offset], np.int64)
        sizes = np.array([10, 10, 10, size], np.int64)
        masked = np.array([good] * 4, np.uint32)
        assert checksum.first_mismatch(buf, offsets, sizes, masked) == 3
        with monkeypatch.context() as p:
            p.setattr(crc, "native", None)
            assert crc.first_mismatch(buf, offsets, sizes, masked) == 3


def test_batched_check_refuses_columns_of_different_lengths():
    with pytest.raises(ValueError):
        checksum.first_mismatch(bytes(8), np.zeros(2, np.int64), np.zeros(1, np.int64), np.zeros(2, np.uint32))


@pytest.mark.parametrize("sizes", [[0], [5], [1000, 0, 3], [3 * MiB + 7, 64, 100_000], [1] * 50])
def test_copy_into_places_and_checksums_like_python(kernel, monkeypatch, sizes):
    """A response's bytes land in consecutive buffers, each with its CRC32C: natively (in the
    copy's pass, with and without the GIL) exactly as the Python fallback does."""
    rng = random.Random(sum(sizes))
    src = rng.randbytes(sum(sizes))
    results = []
    for native in (True, False):
        bufs = [bytearray(n) for n in sizes]
        with monkeypatch.context() as p:
            if not native:
                p.setattr(crc, "native", None)
            crcs = crc.copy_into(src, [memoryview(b) for b in bufs])
        assert b"".join(bufs) == src
        results.append(crcs)
    pos = 0
    for n, c in zip(sizes, results[0]):
        assert c == crc32c.crc32c(src[pos : pos + n])
        pos += n
    assert results[0] == results[1]


def test_copy_into_refuses_a_source_of_another_length(monkeypatch):
    """Never a byte past either end: the buffers and the source must hold the same number."""
    for native in (True, False):
        with monkeypatch.context() as p:
            if not native:
                p.setattr(crc, "native", None)
            for src, bufs in [(bytes(10), [bytearray(4), bytearray(5)]), (bytes(9), [bytearray(10)])]:
                with pytest.raises(ValueError, match="9 bytes|10 bytes"):
                    crc.copy_into(src, bufs)
            with pytest.raises((BufferError, TypeError)):
                crc.copy_into(bytes(3), [bytes(3)])  # not writable


def test_capsule_for_other_native_modules():
    assert type(checksum._C_API).__name__ == "PyCapsule"
    assert "distrestore._native._checksum._C_API" in repr(checksum._C_API)
