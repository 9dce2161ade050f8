"""Verified region reads of bundles the TF fixtures lack, written here byte by byte: big-endian
data, a 1 GiB stored entry (a sparse file) read through bounded buffers, and random regions of
random shapes, stored whole or as row slices, planned with tiny requests."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
from verify_support import flip, touched

import distrestore as dr
from distrestore.assemble import Assembly
from distrestore.execute.threads import ThreadExecutor
from distrestore.format import crc, dtypes, sstable
from distrestore.format.messages import BIG, encode_entry, encode_header
from distrestore.format.slices import slice_key
from distrestore.plan import PlanOptions, build_plan
from distrestore.storage.wrappers import CountingStorage

R = slice


def _write_bundle(prefix: str, entries, data: bytes, endianness: int | None = None) -> None:
    header = encode_header(1) if endianness is None else encode_header(1, endianness)
    with open(prefix + ".index", "wb") as f:
        f.write(sstable.build_table([(b"", header)] + entries))
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(data)


def test_big_endian_region_is_verified(tmp_path):
    """A bundle from a big-endian machine (TF writes none here): its entries are read whole."""
    value = np.arange(24, dtype=">f4").reshape(4, 6)
    blob = value.tobytes()
    prefix = str(tmp_path / "big")
    _write_bundle(prefix, [(b"f", encode_entry(1, (4, 6), 0, 0, len(blob), crc.mask(crc.value(blob))))], blob, BIG)
    region = (R(1, 2), R(2, 4))
    got = dr.load_checkpoint(prefix).get_slice("f", region)
    np.testing.assert_array_equal(got, value.astype("<f4")[region])
    data = prefix + ".data-00000-of-00001"
    for pos in (0, 1 * 24 + 2 * 4, len(blob) - 1):  # outside, inside, outside
        flip(data, pos)
        try:
            with pytest.raises(dr.ChecksumMismatchError, match=re.escape(f"'f': {data} bytes [0, 96)")):
                dr.load_checkpoint(prefix).get_slice("f", region)
        finally:
            flip(data, pos)


def _zeros_crc(n: int) -> int:
    """CRC32C of ``n`` zero bytes without allocating them (doubling with ``crc.combine``)."""
    block = 1 << 20
    unit = crc.value(bytes(block))
    total, k = 0, n // block
    piece, size = unit, block
    while k:
        if k & 1:
            total = crc.combine(total, piece, size)
        piece, size, k = crc.combine(piece, piece, size), size * 2, k >> 1
    return crc.combine(total, crc.value(bytes(n % block)), n % block)


def test_huge_entry_is_checked_through_bounded_buffers(tmp_path):
    """One row of a 1 GiB stored entry (a sparse file): verify reads all of it, in requests of at
    most ``max_request_bytes``, checksumming the unneeded bytes through a per-thread scratch
    buffer, so memory stays far below the entry's size; verify=False reads the row alone."""
    rows, cols = 1 << 18, 1024  # float32: 1 GiB
    size = rows * cols * 4
    prefix = str(tmp_path / "huge")
    entry = encode_entry(1, (rows, cols), 0, 0, size, crc.mask(_zeros_crc(size)))
    _write_bundle(prefix, [(b"w", entry)], b"")
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.truncate(size)  # zeros, without writing them (a sparse file)
    storage = CountingStorage()
    index = dr.open_checkpoint(prefix, storage=storage)
    req = [dr.TensorRequest(index, "w", (R(5, 6),))]
    storage.reset()
    tracemalloc.start()
    try:
        (got,) = dr.fetch(req, executor=ThreadExecutor(workers=2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.shape == (1, cols) and not got.any()
    assert sum(b - a for _, a, b in storage.data_requests()) == size
    assert max(b - a for _, a, b in storage.data_requests()) <= 16 << 20
    assert peak < 2 * (16 << 20) + (16 << 20), f"peak {peak / 2**20:.0f} MiB while checking a 1 GiB entry"
    data = prefix + ".data-00000-of-00001"
    flip(data, size - 1)
    with pytest.raises(dr.ChecksumMismatchError, match=re.escape(f"'w': {data} bytes [0, {size})")):
        dr.fetch(req, executor=ThreadExecutor(workers=2))
    storage.reset()
    (got,) = dr.fetch(req, verify=False)
    assert sum(b - a for _, a, b in storage.data_requests()) == cols * 4
    assert math.prod(got.shape) == cols


def _random_region(rng, shape):
    region = []
    for d in shape:
        a = int(rng.integers(0, d))
        region.append(R(a, int(rng.integers(a + 1, d + 1))))
    return tuple(region)


def test_random_regions_tile_their_entries_and_are_checked(tmp_path):
    """Random regions (one to three per call) of random shapes, stored whole or as row slices,
    planned with tiny requests so column blocks are cut into many staging buffers: every touched
    entry is read exactly once in full (needed plus checksum-only segments tile it), the values
    are right, and a flipped byte anywhere in a touched entry is caught."""
    rng = np.random.default_rng(11)
    for case in range(40):
        shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 4))))
        value = rng.standard_normal(shape).astype(rng.choice([np.float32, np.float64, np.int16]))
        cuts = sorted({0, shape[0], *(int(c) for c in rng.integers(1, shape[0] + 1, size=int(rng.integers(0, 3))))})
        prefix = _write_row_slices(str(tmp_path / f"c{case}"), "t", value, cuts)
        index = dr.open_checkpoint(prefix)
        regions = [_random_region(rng, shape) for _ in range(int(rng.integers(1, 4)))]
        reqs = [dr.TensorRequest(index, "t", r) for r in regions]
        plan = build_plan(reqs, PlanOptions(workers=3, max_request_bytes=48, min_request_bytes=8, pack_bytes=0))
        for eid, e in enumerate(plan.entries):
            runs = sorted((s.entry_offset, s.length) for r in plan.requests for s in r.segments if s.entry == eid)
            assert runs[0][0] == 0 and sum(n for _, n in runs) == e.size, (case, runs)
            assert all(a + n == b for (a, n), (b, _) in zip(runs, runs[1:])), (case, runs)
        sink = Assembly(plan)
        done = set(sink.ready)
        for batch in ThreadExecutor(workers=3).run(plan, sink, {f: index.storage for f in index.data_files()}):
            done.update(batch)
        assert done == set(range(len(regions)))
        for r, got in zip(regions, sink.take_all()):
            np.testing.assert_array_equal(got, value[r])
        file, entry, _ = touched(index, "t", regions[0])[-1]
        flip(file, entry.offset + int(rng.integers(0, entry.size)))
        with pytest.raises(dr.ChecksumMismatchError):
            dr.fetch(reqs)


def _write_row_slices(prefix: str, name: str, value: np.ndarray, cuts: list[int]) -> str:
    """A bundle holding ``value`` as ``name``: whole when ``cuts`` is [0, rows], else as the row
    slices between the cuts under a full-shape entry, as TF stores a partitioned variable."""
    dt = dtypes.from_numpy(value.dtype)
    if len(cuts) == 2:
        blob = value.tobytes()
        _write_bundle(prefix, [(name.encode(), encode_entry(dt.enum, value.shape, 0, 0, len(blob), _crc(blob)))], blob)
        return prefix
    items, data = {}, b""
    extents = []
    for a, b in zip(cuts, cuts[1:]):
        blob = value[a:b].tobytes()
        ext = ((a, b - a),) + ((0, -1),) * (value.ndim - 1)
        extents.append(ext)
        items[slice_key(name, ext)] = encode_entry(dt.enum, value[a:b].shape, 0, len(data), len(blob), _crc(blob))
        data += blob
    items[name.encode()] = encode_entry(dt.enum, value.shape, slices=extents)
    _write_bundle(prefix, sorted(items.items()), data)
    return prefix


def _crc(blob: bytes) -> int:
    return crc.mask(crc.value(blob))
