"""What every contender shares: the timer (wall time, user and system CPU time, page faults and
the process's peak RSS when the restore ends) and the bit-exact checks."""

from __future__ import annotations

import resource
import time

from ..workloads import digest, load


def peak_rss() -> int:
    """This process's peak resident set so far (``VmHWM``; ``ru_maxrss`` where there is none)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timer:
    """Brackets a restore: ``start()``, ``stop()``; ``result()`` gives seconds, user and system
    CPU seconds (all threads), minor page faults, and the peak RSS of the process when the
    restore ended (before any check allocates anything). Only the first interval counts CPU and
    faults; ``lap()`` times a later one (a second restore) by wall time only."""

    def __init__(self):
        self.t0 = self.seconds = None
        self.usage0 = self.usage1 = None
        self.rss = None

    def start(self) -> Timer:
        self.usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> float:
        self.seconds = time.perf_counter() - self.t0
        self.usage1 = resource.getrusage(resource.RUSAGE_SELF)
        self.rss = peak_rss()
        return self.seconds

    def result(self, **extra) -> dict:
        a, b = self.usage0, self.usage1
        return {
            "seconds": self.seconds,
            "user": b.ru_utime - a.ru_utime,
            "sys": b.ru_stime - a.ru_stime,
            "minflt": b.ru_minflt - a.ru_minflt,
            "rss": self.rss,
            **extra,
        }


def lap(fn):
    """Wall seconds of ``fn()`` and its value."""
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def check(outputs, expected: dict, *, subset: bool = False) -> dict:
    """Compare restored buffers ``(key, array)`` with the build-time hashes, every one
    bit-exactly; ``subset``: not every expected key need be there."""
    bad, n = [], 0
    for name, arr in outputs:
        n += 1
        if expected.get(name) != digest(arr):
            bad.append(name)
    missing = 0 if subset else len(expected) - n
    return {"ok": not bad and missing == 0 and n > 0, "checked": n, "bad": bad[:5], "missing": missing}


def hashes(wdir: str) -> dict:
    """Every tensor's SHA-1 (loaded after the restore: not part of what is measured)."""
    return load(wdir, "hashes")["tensors"]


def names(wdir: str) -> list[str]:
    return load(wdir, "names")["names"]


def check_listing(listing, wdir: str) -> dict:
    """A ``list_variables`` answer against the built names and shapes."""
    built = load(wdir, "names")
    want = [(n, s) for n, s in zip(built["names"], built["shapes"])]
    got = [(n, list(s)) for n, s in listing]
    return {"ok": got == want, "checked": len(got), "bad": [], "missing": len(want) - len(got)}
