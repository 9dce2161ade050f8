"""What one service read task does (storage I/O, no Ray): read a piece and check it while hot.

``read_order`` reads bytes ``[start, end)`` of a data file into one buffer (large pieces in
concurrent requests of ``request_bytes``), then checks every entry wholly inside against its
stored CRC32C (fixed-width entries in one batched call; string entries by their own two
checksums) and computes the CRC32C of its part of every entry the piece cuts through, for the
coordinator to combine. A failed check is reported, not raised: whether it fails a worker
depends on the worker's ``verify``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import CorruptCheckpointError
from ..format import crc
from ..format.strings import decode_strings
from ..storage import Storage
from .entries import FIXED, STRINGS
from .files import ReadOrder
from .state import ReadReport

REQUEST_BYTES = 8 << 20  # object stores: the size the thread executor's plans use for them


def read_order(
    storage: Storage, order: ReadOrder, *, request_bytes: int = REQUEST_BYTES, threads: int = 8
) -> tuple[np.ndarray, ReadReport]:
    """The piece's bytes and its report (``node`` left empty for the caller to fill)."""
    t0 = time.perf_counter()
    n = order.end - order.start
    buf = np.empty(n, np.uint8)
    step = n if storage.local else max(1, request_bytes)
    cuts = list(range(0, n, step)) or [0]
    jobs = [(a, min(n, a + step)) for a in cuts]

    def read(job: tuple[int, int]) -> None:
        a, b = job
        storage.readinto(order.path, order.start + a, memoryview(buf)[a:b], what="service read")

    if n:
        if len(jobs) > 1 and threads > 1:
            with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="distrestore-piece") as pool:
                list(pool.map(read, jobs))
        else:
            read(jobs[0])
    bad = _check_inside(buf, order)
    parts = np.fromiter(
        (crc.value(buf[lo:hi]) for lo, hi in zip(order.part_lo.tolist(), order.part_hi.tolist())),
        np.uint32,
        len(order.part_lo),
    )
    report = ReadReport("", time.perf_counter() - t0, len(jobs) if n else 0, bad, order.part_rows, parts)
    return buf, report


def _check_inside(buf: np.ndarray, order: ReadOrder) -> np.ndarray:
    """Rows of the entries wholly inside the piece whose stored checksum does not match."""
    bad: list[int] = []
    fixed = np.flatnonzero(order.inside_check == FIXED)
    offsets, sizes, crcs = order.inside_offset[fixed], order.inside_size[fixed], order.inside_crc[fixed]
    start = 0
    while start < len(fixed):  # one batched call; again past each mismatch (there are few)
        i = crc.first_mismatch(buf, offsets[start:], sizes[start:], crcs[start:])
        if i < 0:
            break
        bad.append(int(order.inside_rows[fixed[start + i]]))
        start += i + 1
    for k in np.flatnonzero(order.inside_check == STRINGS).tolist():
        o, size = int(order.inside_offset[k]), int(order.inside_size[k])
        count = int(order.inside_count[k])
        try:
            decode_strings(buf[o : o + size], count, (count,), stored_crc=int(order.inside_crc[k]), where=order.path)
        except CorruptCheckpointError:
            bad.append(int(order.inside_rows[k]))
    return np.asarray(sorted(bad), np.int64)
