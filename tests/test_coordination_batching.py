"""The restore service's decisions for many small registrations at once, without Ray: the
compact forms that cross process boundaries (registrations, read orders), planning a batch in
one pass (``FileTable.extend_each``), the cache's position index as pieces come and go, and
small pieces read together wherever there is room (``scheduling.ReadQueue``).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ray_fixtures import write_checkpoint

from distrestore.coordination import columns
from distrestore.coordination.files import FileTable, pack_orders, unpack_orders
from distrestore.coordination.pieces import Piece, PieceStore
from distrestore.coordination.ranges import Ranges, needed_ranges
from distrestore.coordination.reading import read_order
from distrestore.coordination.state import Answer, Coordinator, Planned, Registration
from distrestore.coordination.wire import pack, unpack
from distrestore.index import open_checkpoint
from distrestore.plan import PlanOptions, build_plan
from distrestore.restore import TensorRequest

MiB = 1 << 20


def pairs(r: Ranges):
    return list(zip(r.start.tolist(), r.end.tolist()))


@pytest.fixture
def small_model(tmp_path):
    rng = np.random.default_rng(7)
    tensors = {f"t/{i:03d}": rng.standard_normal(16).astype(np.float32) for i in range(300)}
    tensors["words"] = np.array([b"x" * 40, b"yz"], dtype=object)
    prefix = write_checkpoint(str(tmp_path / "m"), tensors, num_shards=2)
    index = open_checkpoint(prefix)
    return index, tensors


def registration(coord, index, info, names, node="n0", verify=True) -> Registration:
    plan = build_plan([TensorRequest(index, n) for n in names], PlanOptions(workers=1, verify=False))
    fids = {p: info.first_file + i for i, p in enumerate(index.data_files())}
    return Registration(needed_ranges(plan, fids), node, verify)


def test_a_registration_travels_as_bytes_and_comes_back_the_same():
    reg = Registration(Ranges.of([5, 100, 1 << 45], [50, 120, (1 << 45) + 7]), "node-a", False, "g", 4)
    wire = pack(reg, 12.5)
    assert isinstance(wire[0], bytes) and len(wire[0]) == 6 * 8
    back, timeout = unpack(wire)
    assert timeout == 12.5 and back.node == "node-a" and back.verify is False
    assert (back.group, back.world_size) == ("g", 4)
    assert pairs(back.need) == pairs(reg.need)
    back.need.start[0] = 0  # a copy the coordinator may keep, not a view of the message


def test_an_unsorted_registration_is_merged_and_a_malformed_one_refused():
    wire = pack(Registration(Ranges.of([100, 0, 40], [120, 50, 60]), "n"), 1.0)
    back, _ = unpack(wire)
    assert pairs(back.need) == [(0, 60), (100, 120)]
    with pytest.raises(ValueError):
        unpack((b"\0" * 24, "n", True, None, None, 1.0))  # three int64: starts and ends differ
    with pytest.raises(ValueError):
        unpack((b"", "n"))


def test_extend_each_is_extend_of_each(small_model):
    index, _ = small_model
    files = FileTable()
    files.add(index.prefix, index)
    rng = np.random.default_rng(1)
    parts = []
    for _ in range(40):
        f = int(rng.integers(0, len(files.entries)))
        size = int(files.entries[f].end.max())
        cuts = np.sort(rng.choice(size, size=int(rng.integers(1, 4)) * 2, replace=False))
        parts.append(Ranges.of(((f << 41) | cuts[0::2]), ((f << 41) | cuts[1::2])))
    parts.append(Ranges.empty())
    got = files.extend_each(parts)
    for r, g in zip(parts, got, strict=True):
        assert pairs(g) == pairs(files.extend(r))


def test_the_position_index_follows_pieces_as_they_come_and_go():
    store = PieceStore()
    pieces = [Piece(i, 100 * i, 100 * i + 50, "n") for i in range(20)]
    store.add_many(pieces[10:])
    store.add_many(pieces[:10:2])
    store.add(pieces[7])
    store.remove_many([pieces[12], pieces[4], pieces[4]])
    store.remove(pieces[19])
    present = sorted({*range(10, 20), *range(0, 10, 2), 7} - {12, 4, 19})
    assert len(store) == len(present) and store.nbytes == 50 * len(present)
    hit = store.overlapping(Ranges.of([0], [2000]))
    assert [p.id for p in hit] == present
    assert [p.id for p in store.overlapping(Ranges.of([420, 790], [760, 900]))] == [6, 7, 8]
    assert [p.id for p in store.overlapping(Ranges.of([1149], [1201]))] == [11]


def test_read_orders_travel_as_columns(small_model):
    index, _ = small_model
    files = FileTable()
    info = files.add(index.prefix, index)
    t = files.entries[0]
    f = info.first_file
    ends = [(f << 41) | int(t.offset[1]) + 3, (f << 41) | int(t.end[-1])]
    orders = [files.order(7, f << 41, ends[0], "n1"), files.order(8, ends[0], ends[1], "n1")]
    back = unpack_orders(pack_orders(orders))
    assert len(back) == 2
    for a, b in zip(orders, back, strict=True):
        assert a._fields == b._fields
        for x, y in zip(a, b, strict=True):
            assert (np.asarray(x) == np.asarray(y)).all() and np.asarray(x).dtype == np.asarray(y).dtype
    assert unpack_orders(pack_orders([])) == []


def test_read_orders_of_many_small_entries_fit_inside_a_task(tmp_path):
    """10^4 small entries in one read task: about 4 bytes each (the CRC32C) once packed, so
    the task's arguments stay under Ray's 100 KB limit for sending them inside the task."""
    tensors = {f"s/{i:05d}": np.full(64, i, np.float32) for i in range(10_000)}
    index = open_checkpoint(write_checkpoint(str(tmp_path / "m"), tensors, num_shards=1))
    files = FileTable()
    info = files.add(index.prefix, index)
    t = files.entries[0]
    f = info.first_file
    half = (f << 41) | int(t.offset[5000]) + 100  # cuts an entry: the second order starts inside one
    orders = [files.order(1, f << 41, half, "n1"), files.order(2, half, (f << 41) | int(t.end[-1]), "n1")]
    assert sum(len(o.inside_rows) for o in orders) == 9_999
    packed = pack_orders(orders)
    assert len(pickle.dumps(packed, protocol=5)) < 60_000
    for a, b in zip(orders, unpack_orders(packed), strict=True):
        for x, y in zip(a, b, strict=True):
            assert (np.asarray(x) == np.asarray(y)).all() and np.asarray(x).dtype == np.asarray(y).dtype


@pytest.mark.parametrize("seed", range(20))
def test_packed_columns_come_back_exactly(seed):
    """Runs with gaps, overlaps, rows out of order, empty runs, values past 2^32 and columns of
    one value: every column comes back bit for bit, in its dtype."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, rng.integers(1, 8)).astype(np.int64)
    n = int(lengths.sum())
    sizes = rng.choice([rng.integers(1, 1 << 40, n), np.full(n, 256)], axis=0) if n else np.zeros(0, np.int64)
    sizes = np.asarray(sizes, np.int64)
    gaps = rng.integers(-3, 3, n) * rng.integers(0, 2, n) * (1 << int(rng.integers(0, 40)))
    offsets = np.cumsum(sizes + gaps) - sizes
    rows = rng.permutation(n).astype(np.int64) if seed % 2 else np.arange(n, dtype=np.int64) + (1 << 33)
    for values, steps in ((offsets, sizes), (rows, np.ones(n, np.int64))):
        firsts, residual = columns.runs_residual(values, steps, lengths)
        back = columns.runs_restore(firsts, columns.decode(columns.encode(residual)), steps, lengths)
        assert back.dtype == values.dtype and (back == values).all()
    for col in (sizes, sizes.astype(np.uint32) if n and sizes.max() < 1 << 32 else sizes, gaps, rows.astype(np.int8)):
        back = columns.decode(columns.encode(col))
        assert back.dtype == col.dtype and (back == col).all()


def test_small_pieces_of_many_nodes_are_read_together(small_model):
    index, tensors = small_model
    coord = Coordinator(cache_bytes=64 * MiB, min_piece_bytes=0, reads_per_node=2, small_piece_bytes=4096)
    info = coord.add_checkpoint(index.prefix, index)
    names = sorted(n for n in tensors if n.startswith("t/"))
    planned = {}
    for k, name in enumerate(names[:40:4]):  # ten small tensors apart, on four nodes
        rid, events = coord.register(registration(coord, index, info, [name], node=f"n{k % 4}"))
        planned.update({e.reg: e for e in events if isinstance(e, Planned)})
    tasks = coord.take_reads()
    assert len(tasks) == 1 and len(tasks[0]) == 10  # one task, not one per node
    more = registration(coord, index, info, [names[100]], node="n3")
    coord.register(more)
    assert len(coord.take_reads()) == 1  # a second small task may run meanwhile ...
    coord.register(registration(coord, index, info, [names[200]], node="n2"))
    assert coord.take_reads() == []  # ... but no third: small pieces wait and go together
    answered = set()
    for o in tasks[0]:
        buf, report = read_order(index.storage, o)
        answered |= {e.reg for e in coord.read_done(o.piece, report._replace(node=o.node)) if isinstance(e, Answer)}
    assert answered == set(planned)
    [[waiting]] = coord.take_reads()  # the first task's slot is free again
    assert coord.stats()["reads_in_flight"] == 2


def test_big_pieces_still_wait_for_their_own_node(small_model):
    index, tensors = small_model
    coord = Coordinator(cache_bytes=64 * MiB, min_piece_bytes=0, small_piece_bytes=16)
    info = coord.add_checkpoint(index.prefix, index)
    names = sorted(n for n in tensors if n.startswith("t/"))
    coord.register(registration(coord, index, info, names[:50], node="n1"))
    coord.register(registration(coord, index, info, names[100:150], node="n2"))
    nodes = {o.node for task in coord.take_reads() for o in task}
    assert nodes == {"n1", "n2"}
