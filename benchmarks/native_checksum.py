"""Micro-benchmark: CPU time of the batched CRC32C check of packed small tensors.

    PYTHONPATH=. python benchmarks/native_checksum.py [--compare OTHER.so] [--rounds 60]

For each size class (many pieces of one size, and mixed sizes) a buffer of pieces with their
masked CRCs is checked with ``distrestore._native._checksum.first_mismatch`` ``--rounds`` times;
the minimum and median ``time.process_time`` per call are printed, with the throughput of the
minimum. ``--compare`` loads another build of the check (a module file exporting
``first_mismatch`` or, as the earlier ``_speedups`` did, ``first_crc_mismatch``) and times it on
the same buffers, interleaved. CPU time, not wall time: the figure is what one call costs.
docs/native.md records a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import crc32c
import numpy as np

from distrestore._native import _checksum
from distrestore.format import crc

CLASSES = [
    (16, 200_000),
    (64, 200_000),
    (256, 100_000),
    (1024, 100_000),
    (4096, 25_000),
    (65536, 1500),
    ("mixed", 100_000),
]


def _load(path: str):
    name = Path(path).name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, "first_mismatch", None) or mod.first_crc_mismatch


def _pieces(size, n, rng):
    sizes = rng.integers(4, 8192, n).astype(np.int64) if size == "mixed" else np.full(n, size, np.int64)
    offsets = (np.cumsum(sizes) - sizes).astype(np.int64)
    buf = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    masked = np.array([crc.mask(crc32c.crc32c(buf[o : o + s])) for o, s in zip(offsets.tolist(), sizes.tolist())])
    return buf, offsets, sizes, masked.astype(np.uint32)


def _time(fn, args, rounds):
    assert fn(*args) == -1
    times = []
    for _ in range(rounds):
        t = time.process_time()
        fn(*args)
        times.append(time.process_time() - t)
    return min(times), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", help="another build's module file")
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    contenders = {f"native ({_checksum.KERNEL})": _checksum.first_mismatch}
    if args.compare:
        contenders[Path(args.compare).name.split(".")[0]] = _load(args.compare)
    rng = np.random.default_rng(0)
    print(f"{'pieces':>16} {'MiB':>7}  " + "  ".join(f"{name:>34}" for name in contenders))
    for size, n in CLASSES:
        pieces = _pieces(size, n, rng)
        cells = []
        for fn in contenders.values():
            lo, med = _time(fn, pieces, args.rounds)
            cells.append(f"{lo * 1e3:7.2f} / {med * 1e3:7.2f} ms {pieces[0].nbytes / lo / 1e9:6.1f} GB/s")
        print(f"{n:>8} x {size!s:>5} {pieces[0].nbytes / 2**20:7.1f}  " + "  ".join(f"{c:>34}" for c in cells))


if __name__ == "__main__":
    main()
