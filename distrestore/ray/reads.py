"""The restore service's Ray tasks: read pieces (where their consumers run), slice a piece
(where it lives).

A read task reads one or more pieces (several small ones share a task, read concurrently) and
returns one object per piece, the bytes that go to the object store and to the workers, plus
one small list of ``ReadReport``s, the only object the coordinator waits for. All are owned by
the coordinator that submitted the task, so Ray can run a lost piece's task again (lineage) as
long as the coordinator lives.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..coordination.files import ReadOrder
from ..coordination.reading import read_order
from ..storage import Storage


def _read_pieces(storage: Storage, orders: list[ReadOrder], threads: int) -> tuple:
    node = ray.get_runtime_context().get_node_id()
    if len(orders) == 1 or threads <= 1:
        done = [read_order(storage, o) for o in orders]
    else:
        with ThreadPoolExecutor(min(threads, len(orders)), thread_name_prefix="distrestore-pieces") as pool:
            done = list(pool.map(lambda o: read_order(storage, o), orders))
    return (*(buf for buf, _ in done), [report._replace(node=node) for _, report in done])


def _slice_piece(data: np.ndarray, offset: int, length: int) -> np.ndarray:
    return data[offset : offset + length]  # stored as a new object: only these bytes travel


read_pieces_task = ray.remote(_read_pieces)
slice_piece_task = ray.remote(_slice_piece)


def submit_read(storage: Storage, orders: list[ReadOrder], *, retries: int, num_cpus: float):
    """(a bytes ref per piece, the reports' ref) of a read task on ``orders[0].node``; soft
    affinity, so that a lost node's reads (and their re-runs for lineage) go elsewhere instead of
    waiting for it forever."""
    refs = read_pieces_task.options(
        num_returns=len(orders) + 1,
        num_cpus=num_cpus,
        max_retries=retries,
        retry_exceptions=False,  # storage errors were retried by the storage's own policy
        scheduling_strategy=NodeAffinitySchedulingStrategy(orders[0].node, soft=True),
    ).remote(storage, orders, 1 if storage.local else 16)
    return refs[:-1], refs[-1]


def submit_slice(piece_ref, offset: int, length: int, *, retries: int):
    """A ref to bytes ``[offset, offset + length)`` of a piece, made where the piece lives (Ray
    schedules a task next to its largest argument)."""
    return slice_piece_task.options(num_cpus=0, max_retries=retries).remote(piece_ref, offset, length)
