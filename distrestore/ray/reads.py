"""The restore service's Ray tasks: read pieces (where their consumers run), slice a piece
(where it lives).

A read task reads one or more pieces (several small ones share a task, read concurrently) and
returns one object per piece, the bytes that go to the object store and to the workers, plus
the list of ``ReadReport``s, the only object the coordinator waits for. Small pieces get no
object of their own: their bytes travel with the reports, and the coordinator hands them over
by value (an object each would cost more to own and fetch than to copy). All objects are owned
by the coordinator that submitted the task, so Ray can run a lost piece's task again (lineage)
as long as the coordinator lives.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..coordination.files import ReadOrder, pack_orders, unpack_orders
from ..coordination.reading import read_order
from ..coordination.state import ReadReport
from ..storage import Storage


def _read_pieces(storage: Storage, packed: tuple, threads: int, by_value_bytes: int) -> tuple:
    node = ray.get_runtime_context().get_node_id()
    orders = unpack_orders(packed)
    if len(orders) == 1 or threads <= 1:
        done = [read_order(storage, o) for o in orders]
    else:
        with ThreadPoolExecutor(min(threads, len(orders)), thread_name_prefix="distrestore-pieces") as pool:
            done = list(pool.map(lambda o: read_order(storage, o), orders))
    big = [buf for o, (buf, _) in zip(orders, done) if not _small(o, by_value_bytes)]
    small = [buf if _small(o, by_value_bytes) else None for o, (buf, _) in zip(orders, done)]
    reports = [_plain(report._replace(node=node)) for _, report in done]
    last = (reports, small)
    return (*big, last) if big else last  # one return value: the object itself


def _plain(report: ReadReport) -> ReadReport:
    """The report with lists for arrays: a few small lists pickle faster than numpy arrays."""
    return report._replace(
        bad_rows=report.bad_rows.tolist(), part_rows=report.part_rows.tolist(), part_crcs=report.part_crcs.tolist()
    )


def _small(order: ReadOrder, by_value_bytes: int) -> bool:
    return order.end - order.start <= by_value_bytes


def _slice_piece(data: np.ndarray, offset: int, length: int) -> np.ndarray:
    return data[offset : offset + length]  # stored as a new object: only these bytes travel


read_pieces_task = ray.remote(_read_pieces)
slice_piece_task = ray.remote(_slice_piece)


def submit_read(storage: Storage, orders: list[ReadOrder], *, retries: int, num_cpus: float, by_value_bytes: int):
    """A read task on ``orders[0].node``: ``({piece: ref of its bytes}, ref of (reports, small))``
    where pieces of at most ``by_value_bytes`` have no object of their own: their bytes come in
    ``small`` (one entry per order, None for the others), with the reports. Soft affinity, so
    that a lost node's reads (and their re-runs for lineage) go elsewhere instead of waiting for
    it forever."""
    big = [o.piece for o in orders if not _small(o, by_value_bytes)]
    task = _read_task(orders[0].node, len(big) + 1, retries, num_cpus)
    refs = task.remote(storage, pack_orders(orders), 1 if storage.local else 16, by_value_bytes)
    refs = refs if isinstance(refs, list) else [refs]
    return dict(zip(big, refs[:-1])), refs[-1]


@functools.lru_cache(maxsize=1024)
def _read_task(node: str, num_returns: int, retries: int, num_cpus: float):
    """The read task with these options (made once: Ray validates options on every ``options``)."""
    return read_pieces_task.options(
        num_returns=num_returns,
        num_cpus=num_cpus,
        max_retries=retries,
        retry_exceptions=False,  # storage errors were retried by the storage's own policy
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
    )


def submit_slice(piece_ref, offset: int, length: int, *, retries: int):
    """A ref to bytes ``[offset, offset + length)`` of a piece, made where the piece lives (Ray
    schedules a task next to its largest argument)."""
    return slice_piece_task.options(num_cpus=0, max_retries=retries).remote(piece_ref, offset, length)
