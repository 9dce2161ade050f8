"""The coordinator's cache: pieces (read results) by position, and the checksums of entries
that pieces cut through.

A :class:`Piece` is one read task's byte range; once read it is an object in Ray's object store
(the coordinator keeps only its reference, elsewhere). Pieces never overlap. Each is *pinned*
while registrations wait for it, and least-recently-used pieces that nobody waits for are
evicted when the cache is over its byte budget.

A fixed-width entry that pieces cut through (an *edge* entry) is checked by combining the
CRC32C of its parts, each computed by the read task that read it (:class:`Edge`): the entry is
verified once every part is there, without reading a byte twice. Entries that lie inside one
piece are checked by that piece's read task itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..format import crc
from .ranges import Ranges, overlapping

PENDING, READY = 0, 1


@dataclass(eq=False)
class Piece:
    id: int
    start: int  # position
    end: int
    node: str  # the node planned to read it
    state: int = PENDING
    ran_on: str = ""  # the node that did read it
    pins: int = 0  # registrations waiting for it or for its answer
    used: int = 0  # LRU clock
    waiters: set = field(default_factory=set)  # registration ids waiting for it to be READY
    edges: tuple = ()  # (file, row) of the fixed-width entries it cuts through
    bad: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # entries inside that failed
    drop: bool = False  # evict as soon as nothing pins it (``release``)

    @property
    def size(self) -> int:
        return self.end - self.start


class Edge:
    """The parts of one entry that pieces cut through, and whether they check out.
    ``status``: None (parts missing), True (verified) or False (mismatch)."""

    __slots__ = ("start", "size", "crc", "parts", "status", "waiters")

    def __init__(self, start: int, size: int, masked_crc: int):
        self.start = start  # position of the entry's first byte
        self.size = size
        self.crc = crc.unmask(masked_crc)
        self.parts: dict[int, tuple[int, int, int]] = {}  # piece id -> (offset in entry, length, crc)
        self.status: bool | None = None
        self.waiters: set[int] = set()

    def add(self, piece: int, offset: int, length: int, value: int) -> bool | None:
        """Record a part; returns the new status (checked as soon as the parts cover the entry)."""
        self.parts[piece] = (offset, length, value)
        if sum(p[1] for p in self.parts.values()) == self.size:
            combined = 0
            for _, length, value in sorted(self.parts.values()):
                combined = crc.combine(combined, value, length)
            self.status = combined == self.crc
        return self.status

    def remove(self, piece: int) -> None:
        """A part's piece left the cache: those bytes will be read again and checked again."""
        if self.parts.pop(piece, None) is not None:
            self.status = None


class PieceStore:
    """Pieces by id and by position. The position index is kept sorted as pieces come and go
    (a few memmoves per batch), not rebuilt: a cache of 10^5 pieces is searched as it grows."""

    def __init__(self):
        self.pieces: dict[int, Piece] = {}
        self._starts = np.empty(0, np.int64)
        self._ends = np.empty(0, np.int64)
        self._ordered: list[Piece] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.pieces)

    def add(self, piece: Piece) -> None:
        self.add_many([piece])

    def add_many(self, pieces: list[Piece]) -> None:
        """Add pieces that overlap none of the store's nor each other."""
        if not pieces:
            return
        pieces = sorted(pieces, key=lambda p: p.start)
        starts = np.fromiter((p.start for p in pieces), np.int64, len(pieces))
        ends = np.fromiter((p.end for p in pieces), np.int64, len(pieces))
        at = np.searchsorted(self._starts, starts)
        self._starts = np.insert(self._starts, at, starts)
        self._ends = np.insert(self._ends, at, ends)
        for k, (p, i) in enumerate(zip(pieces, at.tolist())):
            self._ordered.insert(i + k, p)
            self.pieces[p.id] = p
            self.nbytes += p.size

    def remove(self, piece: Piece) -> None:
        self.remove_many([piece])

    def remove_many(self, pieces: list[Piece]) -> None:
        gone = [p for p in pieces if self.pieces.pop(p.id, None) is not None]
        if not gone:
            return
        self.nbytes -= sum(p.size for p in gone)
        at = np.searchsorted(self._starts, np.fromiter((p.start for p in gone), np.int64, len(gone)))
        keep = np.ones(len(self._starts), bool)
        keep[at] = False
        self._starts, self._ends = self._starts[keep], self._ends[keep]
        self._ordered = [p for p, k in zip(self._ordered, keep.tolist()) if k]

    def overlapping(self, r: Ranges) -> list[Piece]:
        """Pieces that overlap ``r`` (merged), in position order."""
        ordered = self._ordered
        return [ordered[i] for i in overlapping(self._starts, self._ends, r).tolist()]

    @staticmethod
    def extent(pieces: list[Piece]) -> Ranges:
        """The bytes ``pieces`` (in position order) hold, as ranges."""
        return Ranges(
            np.fromiter((p.start for p in pieces), np.int64, len(pieces)),
            np.fromiter((p.end for p in pieces), np.int64, len(pieces)),
        )

    def evictable(self) -> list[Piece]:
        """Read pieces that nothing pins, least recently used first."""
        return sorted((p for p in self.pieces.values() if p.state == READY and not p.pins), key=lambda p: p.used)

    @property
    def pinned_bytes(self) -> int:
        return sum(p.size for p in self.pieces.values() if p.pins)
