"""A ``ReadPlan`` and the frozen, picklable data it is made of: outputs, stored entries, staging
and packed buffers, and requests whose segments say where each run of bytes goes.

Built by ``distrestore.plan.build_plan``; run by an executor into a read sink (an ``Assembly``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from .format.slices import Box
from .redact import redact_url

__all__ = [
    "DIRECT",
    "PACKED",
    "SKIP",
    "STAGED",
    "Copy",
    "Output",
    "Packed",
    "PlanOptions",
    "ReadPlan",
    "ReadRequest",
    "Segment",
    "SegmentKind",
    "Staging",
    "StoredEntry",
]


class SegmentKind(IntEnum):
    """Where a segment's bytes land: its ``target`` is an output, a staging or a packed buffer."""

    DIRECT = 0
    """Straight into an output array (``target``: the output)."""
    STAGED = 1
    """Into a staging buffer, copied out once complete (``target``: the staging buffer)."""
    SKIP = 2
    """Read but placed nowhere (``target``: -1): a gap the planner joined between needed ranges
    (``entry``: -1), or bytes of a stored entry no output needs, read only so that the entry's
    CRC32C can be checked (``entry``/``entry_offset`` say which bytes; their checksum is taken)."""
    PACKED = 3
    """Into a packed group's buffer of small whole tensors (``target``: the group)."""


DIRECT, STAGED, SKIP, PACKED = SegmentKind.DIRECT, SegmentKind.STAGED, SegmentKind.SKIP, SegmentKind.PACKED


class Output(NamedTuple):
    """One array the plan fills: region ``box`` of tensor ``name``."""

    name: str
    checkpoint: str
    dtype: str  # TF dtype name
    box: Box  # in the full tensor's coordinates
    shape: tuple[int, ...]  # of the box


class StoredEntry(NamedTuple):
    """A stored tensor or slice whose bytes the plan reads (all of them, when ``verify``)."""

    name: str
    file: str
    offset: int
    size: int
    crc32c: int  # masked, as stored
    dtype: str
    box: Box  # what it holds, in the full tensor's coordinates
    big_endian: bool
    verify: bool  # every byte is read (some maybe only to check it), so its CRC32C can be checked


class Copy(NamedTuple):
    """Copy region ``box`` (full-tensor coordinates) from a staging buffer into an output."""

    output: int
    box: Box


class Staging(NamedTuple):
    """A buffer holding bytes [start, start + size) of one stored entry until they are placed."""

    entry: int
    start: int  # byte offset inside the entry
    size: int
    copies: tuple[Copy, ...]


class Packed(NamedTuple):
    """Small whole tensors stored back to back: read once into one buffer, handed out as views.

    Bytes [start, start + size) of ``file``; output ``outputs[i]`` (dtype enum ``dtypes[i]``,
    shape ``shapes[i]``) sits at ``offsets[i]`` in the buffer, ``sizes[i]`` bytes, with stored
    masked CRC32C ``crcs[i]``. One request and one object per group, numpy columns inside,
    instead of Python objects per tensor: what makes checkpoints with 10^5 tensors cheap.
    """

    file: str
    start: int
    size: int
    outputs: np.ndarray  # int64
    offsets: np.ndarray  # int64, relative to start
    sizes: np.ndarray  # int64
    crcs: np.ndarray  # uint32
    dtypes: np.ndarray  # int16 enum
    shapes: np.ndarray  # object: shape tuples
    layouts: np.ndarray  # int64: equal exactly for tensors of equal dtype and shape

    def __eq__(self, other):  # numpy fields: compare by value
        return isinstance(other, Packed) and all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(self, other)
        )

    __hash__ = None


class Segment(NamedTuple):
    """A run of a request's bytes and where it goes."""

    length: int
    kind: SegmentKind
    target: int  # output, staging or packed index
    offset: int  # byte offset in the target
    entry: int  # stored entry whose bytes these are (-1 for SKIP)
    entry_offset: int  # byte offset of this run inside that entry


class ReadRequest(NamedTuple):
    """Read bytes [start, end) of ``file``; ``segments`` tile the range in order."""

    file: str
    start: int
    end: int
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PlanOptions:
    """How ranges are cut and joined. Defaults depend on the storage (see ``for_storage``)."""

    max_gap_bytes: int = 0
    """Join neighbouring ranges of one file when at most this many unneeded bytes separate them."""
    max_request_bytes: int = 16 * 2**20
    """No request is larger than this (big ranges are split; joins stop here)."""
    min_request_bytes: int = 2**20
    """Splitting for balance never cuts ranges smaller than this."""
    workers: int = 8
    """Aim for at least a few requests per worker so all of them stay busy."""
    pack_bytes: int = 256 * 1024
    """Whole tensors up to this size are read in packed groups and returned as views."""
    verify: bool = True
    """Read every stored entry a wanted region touches in full, so that its CRC32C (which covers
    the whole entry) can be checked; the bytes no output needs are checksummed and dropped
    (``SKIP`` segments with an ``entry``). False: read exactly the bytes the outputs need."""

    @classmethod
    def for_storage(
        cls, local: bool, workers: int, max_inflight_bytes: int | None = None, *, verify: bool = True
    ) -> PlanOptions:
        # max_gap_bytes stays 0: a subset or partition restore reads no byte between wanted
        # ranges (neighbouring ranges still join); latency is hidden by concurrency instead
        if local:
            opts = cls(max_gap_bytes=0, max_request_bytes=16 * 2**20, workers=workers)
        else:  # object stores: a request costs tens of ms and CPU per request, so fewer, bigger
            # requests (8 MiB at 20-50 ms first-byte latency was the best raw ceiling measured)
            opts = cls(max_gap_bytes=0, max_request_bytes=32 * 2**20, min_request_bytes=8 * 2**20, workers=workers)
        if max_inflight_bytes:
            # one request alone must fit in the budget
            cap = max(1, max_inflight_bytes)
            opts = replace(
                opts,
                max_request_bytes=min(opts.max_request_bytes, cap),
                min_request_bytes=min(opts.min_request_bytes, cap),
                pack_bytes=min(opts.pack_bytes, cap),
            )
        return replace(opts, verify=verify)


@dataclass(frozen=True)
class ReadPlan:
    outputs: tuple[Output | None, ...]  # None: served by a packed group (see ``packed``)
    entries: tuple[StoredEntry, ...]
    staging: tuple[Staging, ...]
    requests: tuple[ReadRequest, ...]
    options: PlanOptions = field(default_factory=PlanOptions)
    packed: tuple[Packed, ...] = ()

    def __eq__(self, other):
        return (
            isinstance(other, ReadPlan)
            and (self.outputs, self.entries, self.staging, self.requests, self.options)
            == (other.outputs, other.entries, other.staging, other.requests, other.options)
            and (len(self.packed) == len(other.packed) and all(a == b for a, b in zip(self.packed, other.packed)))
        )

    @property
    def bytes_to_read(self) -> int:
        return sum(r.nbytes for r in self.requests)

    @property
    def bytes_needed(self) -> int:
        """Bytes some output needs (each once)."""
        return sum(s.length for r in self.requests for s in r.segments if s.kind != SKIP)

    @property
    def bytes_to_verify(self) -> int:
        """Bytes read only so that a stored entry's CRC32C can be checked: the parts of entries
        that wanted regions touch but do not need (0 with ``verify=False``)."""
        return sum(s.length for r in self.requests for s in r.segments if s.kind == SKIP and s.entry >= 0)

    def assign(self, workers: int) -> list[list[int]]:
        """Requests per worker, balanced by bytes (largest first to the least loaded)."""
        loads = [(0, w) for w in range(workers)]
        out: list[list[int]] = [[] for _ in range(workers)]
        heapq.heapify(loads)
        for i in sorted(range(len(self.requests)), key=lambda i: -self.requests[i].nbytes):
            load, w = heapq.heappop(loads)
            out[w].append(i)
            heapq.heappush(loads, (load + self.requests[i].nbytes, w))
        return out

    def summary(self, workers: int | None = None) -> str:
        workers = workers or self.options.workers
        files: dict[str, list[int]] = {}
        for r in self.requests:
            f = files.setdefault(r.file, [0, 0])
            f[0] += 1
            f[1] += r.nbytes
        packed = sum(len(p.outputs) for p in self.packed)
        to_read, needed, to_verify = self.bytes_to_read, self.bytes_needed, self.bytes_to_verify
        why = [f"{_fmt(needed)} needed"]
        if to_verify:
            why.append(f"{_fmt(to_verify)} read only to verify")
        if to_read - needed - to_verify:
            why.append(f"{_fmt(to_read - needed - to_verify)} of gaps joined")
        if not self.options.verify:
            why.append("verify=False: no checksum checked")
        lines = [
            f"ReadPlan: {len(self.outputs)} outputs from {len(self.entries) + packed} stored "
            f"entries, {len(self.requests)} requests, {_fmt(to_read)} to read "
            f"({', '.join(why)}), {len(self.staging)} staging buffers, "
            f"{packed} small tensors in {len(self.packed)} packed groups"
        ]
        for path, (n, b) in files.items():
            lines.append(f"  {redact_url(path)}: {n} requests, {_fmt(b)}")
        if self.requests:
            per = [sum(self.requests[i].nbytes for i in idx) for idx in self.assign(workers)]
            lines.append(f"  per worker ({workers}): " + ", ".join(_fmt(b) for b in per))
        return "\n".join(lines)

    __str__ = summary


def _fmt(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
