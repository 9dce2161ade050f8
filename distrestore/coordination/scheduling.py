"""Which read tasks a coordinator starts, and where: per-node queues of pieces to read.

A piece waits in the queue of the node planned to read it; each node runs at most
``reads_per_node`` read tasks at once (each is a Ray worker process), and a task takes the
node's queued pieces of one checkpoint together (up to ``chunk_bytes`` and
``MAX_PIECES_PER_READ``), so that many small registrations do not cost a task each.

Pieces of at most ``small_piece_bytes`` are handed to workers by value (their bytes travel
through the coordinator whoever reads them), so where they are read does not matter: they wait
in one queue of their own, at most ``reads_per_node`` tasks read them at once, on whichever
node is least busy, and each such task takes every small piece queued meanwhile. A stream of
scattered small registrations from many workers then costs a few large tasks, not one per
worker's call.
"""

from __future__ import annotations

import itertools
from collections import deque

from .files import FileTable, ReadOrder
from .pieces import Piece, PieceStore
from .ranges import file_of

MAX_PIECES_PER_READ = 256


class ReadQueue:
    """Pieces to read, read tasks in flight, and what each task holds."""

    def __init__(
        self,
        files: FileTable,
        store: PieceStore,
        *,
        chunk_bytes: int,
        reads_per_node: int,
        small_piece_bytes: int = 0,
    ):
        self.files = files
        self.store = store
        self.chunk_bytes = chunk_bytes
        self.reads_per_node = reads_per_node
        self.small_piece_bytes = small_piece_bytes
        self.queues: dict[str, deque[Piece]] = {}
        self.small: deque[Piece] = deque()
        self.inflight: dict[str, int] = {}  # read tasks running per node
        self.inflight_bytes: dict[str, int] = {}
        self.small_tasks: set[int] = set()  # read tasks of small pieces, running
        self.task_of: dict[int, int] = {}  # piece id -> its read task
        self.tasks_left: dict[int, int] = {}  # read task -> pieces not yet reported
        self._ids = itertools.count()

    def add(self, piece: Piece) -> None:
        if piece.size <= self.small_piece_bytes:
            self.small.append(piece)
        else:
            self.queues.setdefault(piece.node, deque()).append(piece)

    def load(self, node: str) -> int:
        """Bytes queued for ``node`` and being read there."""
        return sum(p.size for p in self.queues.get(node, ())) + self.inflight_bytes.get(node, 0)

    def take(self) -> list[list[ReadOrder]]:
        """Read tasks to start now, as many as each node has room for."""
        tasks = []
        for node, queue in self.queues.items():
            while queue and self.inflight.get(node, 0) < self.reads_per_node:
                batch = self._batch(queue)
                if batch:
                    tasks.append(self._start(node, batch, small=False))
        while self.small and len(self.small_tasks) < self.reads_per_node:
            batch = self._batch(self.small)
            if batch:
                nodes = dict.fromkeys([*self.queues, *self.inflight, *(p.node for p in batch)])
                node = min(nodes, key=lambda n: (self.inflight.get(n, 0), self.inflight_bytes.get(n, 0)))
                tasks.append(self._start(node, batch, small=True))
        return tasks

    def _batch(self, queue: deque[Piece]) -> list[Piece]:
        batch: list[Piece] = []
        size = 0
        while queue and len(batch) < MAX_PIECES_PER_READ:
            p = queue[0]
            if self.store.pieces.get(p.id) is not p:  # evicted or failed meanwhile
                queue.popleft()
                continue
            if batch and (size + p.size > self.chunk_bytes or self._checkpoint(p) != self._checkpoint(batch[0])):
                break
            batch.append(queue.popleft())
            size += p.size
        return batch

    def _start(self, node: str, batch: list[Piece], small: bool) -> list[ReadOrder]:
        tid = next(self._ids)
        self.tasks_left[tid] = len(batch)
        if small:
            self.small_tasks.add(tid)
        for p in batch:
            p.node = node  # where it is read now
            self.task_of[p.id] = tid
        self.inflight[node] = self.inflight.get(node, 0) + 1
        self.inflight_bytes[node] = self.inflight_bytes.get(node, 0) + sum(p.size for p in batch)
        return [self.files.order(p.id, p.start, p.end, node) for p in batch]

    def _checkpoint(self, p: Piece) -> int:
        return self.files.checkpoint_of[int(file_of(p.start))]

    def finished(self, p: Piece) -> None:
        """Piece ``p``'s read reported (done or failed)."""
        self.inflight_bytes[p.node] -= p.size
        tid = self.task_of.pop(p.id)
        self.tasks_left[tid] -= 1
        if not self.tasks_left[tid]:
            del self.tasks_left[tid]
            self.small_tasks.discard(tid)
            self.inflight[p.node] -= 1

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values()) + len(self.small)

    @property
    def running(self) -> int:
        return sum(self.inflight.values())
