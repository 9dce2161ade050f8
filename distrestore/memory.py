"""Destination memory: the buffers a restore reads into, allocated so that faulting them in is
cheap on the kernel and machine at hand (docs/memory.md has the measurements behind the rules).

A restore writes every byte of its buffers once, so the cost of fresh memory is the cost of its
page faults. numpy asks for transparent huge pages on every allocation of 4 MiB or more
(``madvise(MADV_HUGEPAGE)``); whether that pays depends on where free huge pages come from:

- on a machine whose free 2 MiB blocks are real, free memory, a huge page is one fault instead of
  512, and is the cheapest there is;
- where none is free and the kernel's ``defrag`` setting makes advised faults compact memory
  directly (``always``, ``madvise``, ``defer+madvise``), each fault may stall;
- in a virtual machine whose balloon device reports free pages to its host (virtio free page
  reporting: free blocks of order >= 9 are handed back), every free huge page has been given
  back: faulting one makes the host fault in all 512 of its pages while the guest zeroes it.
  There, 4 KiB pages (served first from the smaller free blocks, which are never reported) are
  far cheaper.

So large buffers get an anonymous mapping of their own, advised for huge pages only where huge
pages are free and not reported to a host, within a budget of the free 2 MiB blocks
``/proc/buddyinfo`` shows, and advised away from them (``MADV_NOHUGEPAGE``) where the kernel would
otherwise use them unasked and they are reported. The mapping is unmapped when the last array
viewing it dies (the arrays keep their ``mmap`` object alive). Small buffers and platforms
without anonymous mappings use ``np.empty``.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

__all__ = [
    "MAPPED_MIN_BYTES",
    "DestinationMemory",
    "HugePagePolicy",
    "free_huge_bytes",
    "free_pages_reported",
    "huge_page_policy",
]

MAPPED_MIN_BYTES = 4 << 20
"""Buffers this size or larger get a mapping of their own (numpy's own huge-page threshold:
smaller ones are plain heap memory either way, and the heap reuses freed pages)."""

_HUGE = 2 << 20
_HUGE_ORDER = 9  # 2 MiB in 4 KiB pages
_THP = "/sys/kernel/mm/transparent_hugepage"
_BALLOONS = "/sys/bus/virtio/drivers/virtio_balloon"
_BUDDYINFO = "/proc/buddyinfo"
_REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING: free page reporting to the host
_CAN_MAP = hasattr(mmap, "MAP_ANONYMOUS") and hasattr(mmap, "MAP_PRIVATE")
_STALLING_DEFRAG = ("always", "madvise", "defer+madvise")  # an advised fault compacts directly


class HugePagePolicy:
    """What to advise for large destination buffers: ``advise`` "huge" (up to ``budget`` bytes,
    then none), "none" or "no-huge"; ``why`` says which rule decided."""

    def __init__(self, advise: str, budget: float, why: str):
        self.advise, self.budget, self.why = advise, budget, why

    def __repr__(self) -> str:
        return f"HugePagePolicy({self.advise!r}, budget={self.budget}, why={self.why!r})"


def _setting(name: str) -> str | None:
    """The selected value of a transparent-huge-page setting (``always [madvise] never``)."""
    try:
        with open(os.path.join(_THP, name)) as f:
            text = f.read()
    except OSError:
        return None
    a, b = text.find("["), text.find("]")
    return text[a + 1 : b] if 0 <= a < b else None


def free_pages_reported() -> bool:
    """Whether a virtio balloon reports free pages to the host (free blocks of order >= 9 are
    then handed back, and a fresh huge page costs the host 512 faults)."""
    try:
        devices = [d for d in os.listdir(_BALLOONS) if d.startswith("virtio")]
    except OSError:
        return False
    for d in devices:
        try:
            with open(os.path.join(_BALLOONS, d, "features")) as f:
                bits = f.read().strip()
        except OSError:
            continue
        if len(bits) > _REPORTING_BIT and bits[_REPORTING_BIT] == "1":
            return True
    return False


def free_huge_bytes() -> int:
    """Bytes free in blocks of 2 MiB or more, from ``/proc/buddyinfo`` (0 where unreadable)."""
    total = 0
    try:
        with open(_BUDDYINFO) as f:
            for line in f:
                counts = line.split()[4:]  # "Node 0, zone Normal c0 c1 ... c10"
                for order, count in enumerate(counts):
                    if order >= _HUGE_ORDER:
                        total += int(count) << order
    except (OSError, ValueError):
        return 0
    return total * 4096


def huge_page_policy() -> HugePagePolicy:
    """Decide from the kernel's settings, the balloon device and the free 2 MiB blocks."""
    enabled, defrag = _setting("enabled"), _setting("defrag")
    if enabled is None or enabled == "never":
        return HugePagePolicy("none", 0, "no transparent huge pages here")
    if free_pages_reported():
        if enabled == "always":  # the kernel would use reported blocks unasked
            return HugePagePolicy("no-huge", 0, "free pages are reported to the host; THP enabled=always")
        return HugePagePolicy("none", 0, "free pages are reported to the host")
    if enabled != "madvise":  # "always": huge pages where free, no direct compaction unadvised
        return HugePagePolicy("none", 0, f"THP enabled={enabled}: used without advice")
    if defrag not in _STALLING_DEFRAG:  # "defer", "never": an advised fault never stalls
        return HugePagePolicy("huge", float("inf"), f"THP defrag={defrag}: advised faults do not stall")
    free = free_huge_bytes()  # advise only what free 2 MiB blocks cover, with room for others
    return HugePagePolicy("huge", free // 2, f"THP defrag={defrag}: half of {free >> 20} MiB free in 2 MiB blocks")


class DestinationMemory:
    """The allocator of one restore (an ``execute.sink.Allocator``): large buffers mapped and
    advised by :func:`huge_page_policy`, decided once when it is made; the huge-page budget is
    spent as buffers are handed out."""

    def __init__(self, policy: HugePagePolicy | None = None):
        self.policy = policy if policy is not None else (huge_page_policy() if _CAN_MAP else None)
        self._huge_left = self.policy.budget if self.policy is not None else 0

    def __call__(self, kind, target: int, nbytes: int) -> np.ndarray:
        return self.empty(nbytes)

    def empty(self, nbytes: int) -> np.ndarray:
        """A writable uint8 array of ``nbytes``, its pages not yet faulted in."""
        if nbytes < MAPPED_MIN_BYTES or self.policy is None:
            return np.empty(nbytes, np.uint8)
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        advise = self.policy.advise
        if advise == "huge" and nbytes >= _HUGE and self._huge_left >= nbytes:
            self._huge_left -= nbytes
            _madvise(m, "MADV_HUGEPAGE")
        elif advise == "no-huge":
            _madvise(m, "MADV_NOHUGEPAGE")
        return np.frombuffer(m, np.uint8)  # the array keeps the mapping; it is unmapped with the last view


def _madvise(m: mmap.mmap, name: str) -> None:
    option = getattr(mmap, name, None)
    if option is not None:
        try:
            m.madvise(option)
        except OSError:  # advice is advice: a kernel without it allocates as usual
            pass
