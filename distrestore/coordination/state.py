"""The coordinator's decisions, without Ray: registrations in, reads and answers out.

:class:`Coordinator` is a state machine. ``register`` takes what one worker needs (byte ranges
as positions, its node, whether to verify, its group) and returns events; ``take_reads`` hands
out the read tasks to start now (a few per node at a time); ``read_done``/``read_failed`` take a
read's outcome and return the registrations that can now be answered or must fail. The Ray
actor (``distrestore.ray.service``) only carries these messages: every decision is here, and
tested without Ray.

A registration is answered twice. ``Planned`` comes at once and lists, per piece covering its
bytes, what to hand over: the whole piece, or a slice of it when the piece lives (or is being
read) on another node and holds much more than it needs (the slice is made where the piece
lives, so only needed bytes cross nodes). The worker copies pieces as they arrive, while others
are still being read. ``Answer`` comes when every piece is read and, with ``verify`` (reads grown
to whole stored entries), every entry the pieces cut through is checked by combining its parts'
CRC32C; the worker uses nothing before it. A group registers
``world_size`` members and is planned as one batch when the last arrives, so their reads are
coalesced and cut at every member's boundary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ChecksumMismatchError, GroupMismatchError, ServiceTimeoutError
from ..index import CheckpointIndex
from .cutting import NO_NODE, cut
from .files import CheckpointInfo, FileTable, ReadOrder
from .pieces import READY, Edge, Piece, PieceStore
from .ranges import Ranges, file_of, merge, position, subtract
from .ranges import overlapping as overlapping_rows
from .scheduling import ReadQueue

MIN_CHUNK_BYTES = 4 << 20


class Registration(NamedTuple):
    """What one worker needs: byte positions (merged), its Ray node, and how."""

    need: Ranges
    node: str
    verify: bool = True
    group: str | None = None
    world_size: int | None = None


class ReadReport(NamedTuple):
    """What a read task says besides its bytes."""

    node: str  # where it ran
    seconds: float
    requests: int  # storage requests it made
    bad_rows: np.ndarray  # rows of the entries inside that failed their check (or a list)
    part_rows: np.ndarray  # rows of the entries it cut through ...
    part_crcs: np.ndarray  # ... and the CRC32C of its part of each


class Delivery(NamedTuple):
    """Bytes ``[start, end)`` (positions) of piece ``piece``, which begin ``offset`` bytes into
    it: the whole piece, or (``sliced``) a slice of it, to be made where it lives."""

    piece: int
    start: int
    end: int
    offset: int
    sliced: bool


class Planned(NamedTuple):
    """A registration's objects, to hand over at once (pieces not yet read are handed over as
    references to come): the worker copies each as it arrives, and uses none before ``Answer``."""

    reg: int
    deliveries: list[Delivery]


class Answer(NamedTuple):
    """Every byte of the registration was read and (with ``verify``) checked."""

    reg: int


class Failure(NamedTuple):
    reg: int
    error: BaseException


class Evicted(NamedTuple):
    pieces: list[int]


@dataclass(eq=False)
class _Waiting:
    reg: Registration
    span: Ranges  # the bytes it waits for (need, grown to whole entries with verify)
    pieces: list[Piece]
    left: int = 0  # pieces not yet read + edge entries not yet checked
    cached: int = 0  # bytes of its pieces that were read before it came


@dataclass(eq=False)
class _Group:
    generation: int
    world_size: int
    members: list = field(default_factory=list)


class Coordinator:
    """All state of one restore service. ``cache_bytes``: read results kept once taken (pieces
    still waited for are kept regardless). ``chunk_bytes``: most bytes one read reads.
    ``min_piece_bytes``: smaller neighbouring runs are read (and delivered) together; also the
    unused bytes above which a delivery across nodes is sliced. ``reads_per_node``: reads in
    flight per node (each read task is a Ray worker process). ``small_piece_bytes``: pieces this
    small are read wherever there is room, together (the service hands them over by value)."""

    def __init__(
        self,
        *,
        cache_bytes: int,
        chunk_bytes: int = 16 << 20,
        min_piece_bytes: int = 256 << 10,
        reads_per_node: int = 2,
        small_piece_bytes: int = 0,
    ):
        if chunk_bytes <= 0 or reads_per_node < 1 or cache_bytes < 0:
            raise ValueError("chunk_bytes and reads_per_node must be positive, cache_bytes not negative")
        self.cache_bytes = cache_bytes
        self.chunk_bytes = chunk_bytes
        self.min_piece_bytes = min_piece_bytes
        self.reads_per_node = reads_per_node
        self.files = FileTable()
        self.store = PieceStore()
        self.edges: dict[tuple[int, int], Edge] = {}
        self.waiting: dict[int, _Waiting] = {}
        self.groups: dict[str, _Group] = {}
        self.reads = ReadQueue(
            self.files,
            self.store,
            chunk_bytes=chunk_bytes,
            reads_per_node=reads_per_node,
            small_piece_bytes=small_piece_bytes,
        )
        self._ids = itertools.count()
        self._clock = itertools.count()
        self.counters = dict.fromkeys(
            ("registrations", "answered", "failed", "bytes_read", "requests", "reads", "bytes_from_cache"), 0
        )
        self.bytes_served: dict[str, int] = {}
        self.reads_by_node: dict[str, int] = {}
        self._dropping = False  # pieces wait to be dropped once nothing pins them (``release``)

    # -- checkpoints --------------------------------------------------------------------------

    def add_checkpoint(self, prefix: str, index: CheckpointIndex) -> CheckpointInfo:
        return self.files.add(prefix, index)

    # -- registrations ------------------------------------------------------------------------

    def register(self, reg: Registration) -> tuple[int, list]:
        """A registration's id and the events it causes (its answer, when its bytes are cached)."""
        [rid], events = self.register_many([reg])
        return rid, events

    def register_many(self, regs: list[Registration]) -> tuple[list[int], list]:
        """Ids of registrations that arrived together, and the events they cause. Those outside
        groups are planned as one batch (their reads coalesced, cut at each one's boundaries);
        group members join their groups, and a group that is complete is planned as one batch."""
        rids, events, alone = [], [], []
        for reg in regs:
            rid = next(self._ids)
            rids.append(rid)
            self.counters["registrations"] += 1
            if reg.group is None:
                alone.append((rid, reg))
            else:
                events += self._join(rid, reg)
        if alone:
            events += self._plan(alone)
        return rids, events

    def _join(self, rid: int, reg: Registration) -> list:
        if not reg.world_size or reg.world_size < 1:
            return [self._count_failure(rid, GroupMismatchError(f"group {reg.group!r}: world_size must be >= 1"))]
        g = self.groups.get(reg.group)
        if g is None:
            g = self.groups[reg.group] = _Group(next(self._ids), reg.world_size)
        elif reg.world_size != g.world_size:
            return [
                self._count_failure(
                    rid,
                    GroupMismatchError(
                        f"group {reg.group!r}: this member says world_size={reg.world_size}, "
                        f"the first said {g.world_size}"
                    ),
                )
            ]
        g.members.append((rid, reg))
        if len(g.members) < g.world_size:
            return []
        del self.groups[reg.group]
        return self._plan(g.members)

    def group_generation(self, name: str) -> int | None:
        """The generation of the group now gathering under ``name`` (to expire it by)."""
        g = self.groups.get(name)
        return None if g is None else g.generation

    def expire_group(self, name: str, generation: int) -> list:
        """Fail every member of the group if it is still gathering (its time ran out)."""
        g = self.groups.get(name)
        if g is None or g.generation != generation:
            return []
        del self.groups[name]
        err = ServiceTimeoutError(
            f"group {name!r}: {len(g.members)} of {g.world_size} members registered before the timeout"
        )
        return [self._count_failure(rid, err) for rid, _ in g.members]

    def withdraw(self, rid: int, error: BaseException) -> list:
        """Fail a registration still waiting (its caller's time ran out)."""
        if rid in self.waiting:
            return self._fail(rid, error)
        for name, g in list(self.groups.items()):
            if any(r == rid for r, _ in g.members):
                g.members = [(r, m) for r, m in g.members if r != rid]
                if not g.members:
                    del self.groups[name]
                return [self._count_failure(rid, error)]
        return []

    def _plan(self, members: list[tuple[int, Registration]]) -> list:
        verified = iter(self.files.extend_each([reg.need for _, reg in members if reg.verify]))
        spans = [next(verified) if reg.verify else reg.need for _, reg in members]
        union = merge(Ranges.concat(spans))
        todo = subtract(union, PieceStore.extent(self.store.overlapping(union)))
        if len(todo):
            nodes = list(dict.fromkeys(reg.node for _, reg in members))
            node_index = {n: i for i, n in enumerate(nodes)}
            load = [self.reads.load(n) for n in nodes]
            new = cut(
                todo,
                [reg.need for _, reg in members],
                nodes=[node_index[reg.node] for _, reg in members],
                chunk=self._chunk(todo.nbytes, len(nodes)),
                min_piece=self.min_piece_bytes,
                atoms=self.files.atoms,
                load=load,
            )
            added = []
            for s, e, k in zip(new.start.tolist(), new.end.tolist(), new.node.tolist()):
                node = nodes[k] if k != NO_NODE else nodes[0]
                piece = Piece(next(self._ids), s, e, node, edges=self.files.edges(s, e))
                for key in piece.edges:
                    if key not in self.edges:
                        self.edges[key] = Edge(*self.files.edge_span(*key))
                added.append(piece)
            self.store.add_many(added)
            for piece in added:
                self.reads.add(piece)
        events = []
        for (rid, reg), span in zip(members, spans):
            events += self._wait(rid, reg, span)
        return events

    def _chunk(self, nbytes: int, nodes: int) -> int:
        """Piece size for reading ``nbytes`` for ``nodes`` nodes: about four pieces per node, so
        every node reads and workers copy pieces while others are still being read; at most
        ``chunk_bytes``, at least ``MIN_CHUNK_BYTES``."""
        return max(min(self.chunk_bytes, MIN_CHUNK_BYTES), min(self.chunk_bytes, -(-nbytes // (4 * max(nodes, 1)))))

    def _wait(self, rid: int, reg: Registration, span: Ranges) -> list:
        pieces = self.store.overlapping(span)
        w = self.waiting[rid] = _Waiting(reg, span, pieces)
        for p in pieces:
            p.pins += 1
            if p.state == READY:
                w.cached += p.size
            else:
                p.waiters.add(rid)
                w.left += 1
        if reg.verify:
            for key in dict.fromkeys(k for p in pieces for k in p.edges):
                e = self.edges[key]
                if not len(overlapping_rows(span.start, span.end, Ranges.of([e.start], [e.start + e.size]))):
                    continue  # the piece reaches past this registration's entries
                if e.status is None:
                    e.waiters.add(rid)
                    w.left += 1
                elif e.status is False:
                    return self._fail(rid, self._edge_error(key))
            for p in pieces:
                if p.state == READY and len(p.bad):
                    err = self._bad_rows_error(p, span)
                    if err is not None:
                        return self._fail(rid, err)
        planned = Planned(rid, self._deliveries(w))
        return [planned, *self._answer(rid)] if w.left == 0 else [planned]

    # -- reads ----------------------------------------------------------------------------------

    def take_reads(self) -> list[list[ReadOrder]]:
        """Read tasks to start now (``scheduling.ReadQueue``: a few per node at a time, small
        pieces together)."""
        return self.reads.take()

    def read_done(self, piece_id: int, report: ReadReport) -> list:
        p = self.store.pieces.get(piece_id)
        if p is None:
            return []
        self.reads.finished(p)
        p.state, p.ran_on, p.bad = READY, report.node, np.asarray(report.bad_rows, np.int64)
        self.counters["bytes_read"] += p.size
        self.counters["requests"] += report.requests
        self.counters["reads"] += 1
        self.reads_by_node[report.node] = self.reads_by_node.get(report.node, 0) + p.size
        events: list = []
        crcs = dict(zip(np.asarray(report.part_rows).tolist(), np.asarray(report.part_crcs).tolist()))
        for key in p.edges:
            e = self.edges[key]
            lo, hi = max(e.start, p.start), min(e.start + e.size, p.end)
            status = e.add(p.id, lo - e.start, hi - lo, int(crcs[key[1]]))
            if status is None:
                continue
            waiters, e.waiters = e.waiters, set()
            for rid in waiters:
                if rid not in self.waiting:
                    continue
                if status:
                    events += self._progress(rid)
                else:
                    events += self._fail(rid, self._edge_error(key))
        waiters, p.waiters = p.waiters, set()
        for rid in waiters:
            w = self.waiting.get(rid)
            if w is None:
                continue
            err = self._bad_rows_error(p, w.span) if w.reg.verify and len(p.bad) else None
            events += self._fail(rid, err) if err is not None else self._progress(rid)
        return events + self._evict()

    def read_failed(self, piece_id: int, error: BaseException) -> list:
        """A read failed past its retries: every registration waiting for it fails with
        ``error``, and the piece leaves the cache (a later registration reads it again)."""
        p = self.store.pieces.get(piece_id)
        if p is None:
            return []
        self.reads.finished(p)
        self._remove([p])
        events: list = []
        waiters, p.waiters = p.waiters, set()
        for rid in waiters:
            if rid in self.waiting:
                events += self._fail(rid, error)
        return events

    def waiting_for(self, piece_id: int) -> list[int]:
        """Registrations waiting for a piece to be read."""
        p = self.store.pieces.get(piece_id)
        return [] if p is None else list(p.waiters)

    def describe_piece(self, piece_id: int) -> str:
        p = self.store.pieces.get(piece_id)
        return "" if p is None else self.files.describe_range(p.start, p.end)

    # -- answers --------------------------------------------------------------------------------

    def _progress(self, rid: int) -> list:
        w = self.waiting[rid]
        w.left -= 1
        return self._answer(rid) if w.left == 0 else []

    def _deliveries(self, w: _Waiting) -> list[Delivery]:
        """Per piece holding bytes it needs: the whole piece, or a slice where the piece lives
        (or is being read) on another node and holds ``min_piece_bytes`` more than it needs."""
        need = w.reg.need
        starts = np.fromiter((p.start for p in w.pieces), np.int64, len(w.pieces))
        ends = np.fromiter((p.end for p in w.pieces), np.int64, len(w.pieces))
        first = np.searchsorted(need.end, starts, side="right")
        last = np.searchsorted(need.start, ends, side="left") - 1
        deliveries = []
        for p, i, j in zip(w.pieces, first.tolist(), last.tolist()):
            if i > j:
                continue  # read only to complete an entry's checksum
            lo, hi = max(int(need.start[i]), p.start), min(int(need.end[j]), p.end)
            where = p.ran_on if p.state == READY else p.node
            sliced = where != w.reg.node and p.size - (hi - lo) > self.min_piece_bytes
            if not sliced:
                lo, hi = p.start, p.end
            deliveries.append(Delivery(p.id, lo, hi, lo - p.start, sliced))
            self.bytes_served[w.reg.node] = self.bytes_served.get(w.reg.node, 0) + hi - lo
        return deliveries

    def _answer(self, rid: int) -> list:
        w = self.waiting.pop(rid)
        for p in w.pieces:
            p.pins -= 1
            p.used = next(self._clock)
        self.counters["answered"] += 1
        self.counters["bytes_from_cache"] += w.cached
        return [Answer(rid), *self._evict()]

    def _count_failure(self, rid: int, error: BaseException) -> Failure:
        self.counters["failed"] += 1
        return Failure(rid, error)

    def _fail(self, rid: int, error: BaseException) -> list:
        w = self.waiting.pop(rid)
        for p in w.pieces:
            p.pins -= 1
            p.waiters.discard(rid)
        for e in self.edges.values():
            e.waiters.discard(rid)
        return [self._count_failure(rid, error), *self._evict()]

    def _edge_error(self, key: tuple[int, int]) -> ChecksumMismatchError:
        e = self.edges[key]
        return ChecksumMismatchError(
            f"checksum mismatch for {self.files.describe(*key)} (CRC32C combined from the "
            f"{len(e.parts)} pieces read); the data file is corrupt"
        )

    def _bad_rows_error(self, p: Piece, span: Ranges) -> ChecksumMismatchError | None:
        f = int(file_of(p.start))
        t = self.files.entries[f]
        for row in p.bad.tolist():
            s = int(position(f, t.offset[row]))
            if len(overlapping_rows(span.start, span.end, Ranges.of([s], [s + int(t.size[row])]))):
                return ChecksumMismatchError(
                    f"checksum mismatch for {self.files.describe(f, row)}; the data file is corrupt"
                )
        return None

    # -- the cache ------------------------------------------------------------------------------

    def _remove(self, pieces: list[Piece]) -> None:
        self.store.remove_many(pieces)
        for p in pieces:
            for key in p.edges:
                e = self.edges.get(key)
                if e is not None:
                    e.remove(p.id)
                    if not e.parts and not e.waiters:
                        del self.edges[key]

    def _evict(self) -> list:
        if self.store.nbytes <= self.cache_bytes and not self._dropping:
            return []
        gone = []
        over = self.store.nbytes - self.cache_bytes
        for p in self.store.evictable():
            if p.drop or over > 0:
                gone.append(p)
                over -= p.size
        self._remove(gone)
        self._dropping = any(p.drop for p in self.store.pieces.values())
        return [Evicted([p.id for p in gone])] if gone else []

    def release(self) -> list:
        """Drop every cached read result: now where nothing waits for it, else once answered."""
        for p in self.store.pieces.values():
            p.drop = True
        self._dropping = True
        return self._evict()

    def stats(self) -> dict:
        return {
            **self.counters,
            "bytes_served": dict(self.bytes_served),
            "reads_by_node": dict(self.reads_by_node),
            "cache_bytes": self.store.nbytes,
            "cache_budget": self.cache_bytes,
            "pinned_bytes": self.store.pinned_bytes,
            "pieces": len(self.store),
            "waiting": len(self.waiting),
            "groups_gathering": {n: len(g.members) for n, g in self.groups.items()},
            "reads_queued": self.reads.queued,
            "reads_in_flight": self.reads.running,
            "checkpoints": [c.prefix for c in self.files.checkpoints],
        }
