"""The restore service's decisions without Ray (``distrestore.coordination``): byte ranges,
entries, cutting and placing reads, the cache, CRC combination, groups, and answers.

The coordinator state machine is driven here the way the Ray actor drives it (``Sim``): reads
run with the real read function against real files, registrations come from real plans, and
workers assemble with the real ``Assembly`` from what they were delivered, so values are
compared bit for bit with a restore from storage.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from checks import assert_bit_exact
from ray_fixtures import write_checkpoint

from distrestore.assemble import Assembly
from distrestore.coordination.cutting import NO_NODE, cut
from distrestore.coordination.delivered import Placer
from distrestore.coordination.entries import FIXED, STRINGS, file_entries
from distrestore.coordination.files import FileTable
from distrestore.coordination.pieces import Edge
from distrestore.coordination.ranges import (
    Ranges,
    contains,
    file_of,
    intersect,
    merge,
    needed_ranges,
    offset_of,
    overlapping,
    position,
    subtract,
)
from distrestore.coordination.reading import read_order
from distrestore.coordination.state import Answer, Coordinator, Evicted, Failure, Planned, Registration
from distrestore.errors import (
    ChecksumMismatchError,
    CorruptCheckpointError,
    GroupMismatchError,
    ServiceTimeoutError,
    StorageError,
)
from distrestore.format import crc
from distrestore.index import open_checkpoint
from distrestore.plan import PlanOptions, build_plan
from distrestore.restore import TensorRequest, fetch

MiB = 1 << 20


def R(*pairs) -> Ranges:
    return Ranges.of([a for a, _ in pairs], [b for _, b in pairs])


def pairs(r: Ranges):
    return list(zip(r.start.tolist(), r.end.tolist()))


# -- ranges --------------------------------------------------------------------------------------


def test_positions_keep_files_apart():
    p = position(3, 17)
    assert int(file_of(p)) == 3 and int(offset_of(p)) == 17
    assert position(2, (1 << 41) - 1) < position(3, 0)


def test_merge_subtract_intersect():
    r = merge(R((10, 20), (0, 5), (5, 7), (18, 30), (40, 40)))
    assert pairs(r) == [(0, 7), (10, 30)]
    assert pairs(subtract(r, R((3, 12), (25, 26)))) == [(0, 3), (12, 25), (26, 30)]
    assert pairs(intersect(r, R((6, 11), (29, 50)))) == [(6, 7), (10, 11), (29, 30)]
    assert contains(r, np.array([0, 6, 7, 9, 10, 29, 30])).tolist() == [True, True, False, False, True, True, False]
    assert overlapping(np.array([0, 10, 20]), np.array([5, 15, 25]), R((4, 11), (24, 30))).tolist() == [0, 1, 2]
    assert overlapping(np.array([0, 10]), np.array([5, 15]), R((5, 10))).tolist() == []


def test_needed_ranges_of_a_plan_skip_gaps(tmp_path):
    prefix = write_checkpoint(str(tmp_path / "m"), {"a": np.arange(100, dtype=np.float32), "b": np.ones(10)})
    index = open_checkpoint(prefix)
    plan = build_plan([TensorRequest(index, "a", (slice(10, 20),))], PlanOptions(workers=1))
    need = needed_ranges(plan, {index.data_file(0): 5})
    e = index.entry("a")
    assert pairs(need) == [(int(position(5, e.offset + 40)), int(position(5, e.offset + 80)))]
    gapped = build_plan(
        [TensorRequest(index, "a", (slice(0, 2),)), TensorRequest(index, "a", (slice(98, 100),))],
        PlanOptions(workers=1, max_gap_bytes=1 << 20),
    )
    assert len(gapped.requests) == 1  # one request across the gap: the gap is not needed
    assert needed_ranges(gapped, {index.data_file(0): 0}).nbytes == 16


# -- entries and files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(fixtures_dir):
    import json

    d = fixtures_dir / "tf1_sharded"
    exp = json.loads((d / "expected.json").read_text())
    return open_checkpoint(str(d / exp["prefix"]))


def test_file_entries_cover_every_stored_entry(sharded):
    tables = file_entries(sharded)
    assert len(tables) == sharded.header.num_shards
    n_slices = sum(len(e.slices) for e in sharded.entries.partitioned())
    n_plain = sum(1 for e in sharded.entries.values() if not e.slices and e.size)
    assert sum(len(t.offset) for t in tables) == n_plain + n_slices
    for t in tables:
        assert (t.offset[1:] >= t.end[:-1]).all()  # sorted, disjoint
    labels = [label for t in tables for label in t.labels]
    assert any(label.startswith("big/part5 slice [[20, 40], [0, 8]]") for label in labels)
    row = next((i, t) for t in tables for i, label in enumerate(t.labels) if label == "scope1/w")
    e = sharded.entry("scope1/w")
    assert row[1].offset[row[0]] == e.offset and row[1].check[row[0]] == FIXED


def test_string_entries_are_checked_whole(tmp_path):
    prefix = write_checkpoint(str(tmp_path / "m"), {"s": np.array([b"ab", b"", b"xyz"], dtype=object)})
    [t] = file_entries(open_checkpoint(prefix))
    assert t.check.tolist() == [STRINGS] and t.count.tolist() == [3]


def test_extend_and_edges(sharded):
    files = FileTable()
    info = files.add(sharded.prefix, sharded)
    e = sharded.entry("scope1/w")
    f = info.first_file + e.shard_id
    mid = position(f, e.offset + e.size // 2)
    grown = files.extend(R((mid, mid + 1)))
    assert pairs(grown) == [(int(position(f, e.offset)), int(position(f, e.offset + e.size)))]
    assert files.edges(int(mid), int(position(f, e.offset + e.size))) != ()
    assert files.edges(int(position(f, e.offset)), int(position(f, e.offset + e.size))) == ()
    order = files.order(0, int(position(f, e.offset)), int(mid), "n")
    assert len(order.part_rows) == 1 and order.part_lo.tolist() == [0]


# -- cutting -------------------------------------------------------------------------------------


def test_cut_at_consumer_boundaries_and_place_on_the_consumer():
    todo = R((0, 100 * MiB))
    a, b = R((0, 40 * MiB)), R((40 * MiB, 100 * MiB))
    p = cut(todo, [a, b], chunk=32 * MiB, min_piece=256 << 10)
    assert pairs(Ranges(p.start, p.end))[0] == (0, 20 * MiB)  # 40 MiB in two equal parts
    assert 40 * MiB in p.start.tolist()
    for s, e, n in zip(p.start.tolist(), p.end.tolist(), p.node.tolist()):
        assert e - s <= 32 * MiB
        assert n == (0 if e <= 40 * MiB else 1)


def test_shared_bytes_are_spread_and_unclaimed_ones_go_to_the_least_loaded():
    todo = R((0, 64 * MiB))
    everyone = [R((0, 48 * MiB))] * 3  # the last 16 MiB nobody needs (a checksum's remainder)
    p = cut(todo, everyone, chunk=8 * MiB, min_piece=0, load=[0, 0, 0])
    assert len(p) == 8 and len(set(p.node.tolist())) == 3
    per_node = np.bincount(p.node, weights=p.end - p.start, minlength=3)
    assert per_node.max() - per_node.min() <= 8 * MiB
    assert cut(todo, [], chunk=MiB, min_piece=0).node.tolist() == [NO_NODE] * 64


def test_workers_of_one_node_get_their_own_pieces_read_on_their_node():
    halves = [R((0, 10 * MiB)), R((10 * MiB, 20 * MiB)), R((20 * MiB, 30 * MiB))]
    p = cut(R((0, 30 * MiB)), halves, nodes=[0, 0, 1], chunk=32 * MiB, min_piece=0)
    assert pairs(Ranges(p.start, p.end)) == [(0, 10 * MiB), (10 * MiB, 20 * MiB), (20 * MiB, 30 * MiB)]
    assert p.node.tolist() == [0, 0, 1]


def test_small_interleaved_runs_are_joined():
    # 1,000 runs of 1 KiB alternating between two nodes: joined into pieces of about min_piece
    starts = np.arange(1000) * 1024
    a = Ranges(starts[::2], starts[::2] + 1024)
    b = Ranges(starts[1::2], starts[1::2] + 1024)
    p = cut(R((0, 1000 * 1024)), [a, b], chunk=MiB, min_piece=64 << 10)
    assert 10 <= len(p) <= 20
    assert pairs(merge(Ranges(p.start, p.end))) == [(0, 1000 * 1024)]


def test_cuts_never_fall_inside_an_atom():
    p = cut(R((0, 100)), [R((0, 100))], chunk=10, min_piece=0, atoms=R((5, 37), (60, 61)))
    for s in p.start.tolist():
        assert not (5 < s < 37)
    assert pairs(merge(Ranges(p.start, p.end))) == [(0, 100)]
    assert (p.end - p.start).min() > 0


# -- the coordinator, driven like the Ray actor drives it ----------------------------------------


class Sim:
    """Runs reads with the real read function; ``node_of`` overrides where a read 'ran'."""

    def __init__(self, coord: Coordinator, storage, node_of=None):
        self.coord = coord
        self.storage = storage
        self.node_of = node_of or (lambda order: order.node)
        self.bufs: dict[int, np.ndarray] = {}
        self.planned: dict[int, list] = {}  # deliveries, handed over at once
        self.answers: set[int] = set()  # registrations read and checked
        self.handed: dict[int, list[np.ndarray]] = {}
        self.failures: dict[int, BaseException] = {}
        self.evicted: list[int] = []
        self.orders = []

    def handle(self, events):
        for ev in events:
            if isinstance(ev, Planned):
                assert ev.reg not in self.planned
                self.planned[ev.reg] = ev.deliveries
            elif isinstance(ev, Answer):  # every piece is read (and pinned until now)
                assert ev.reg in self.planned
                self.answers.add(ev.reg)
                ds = self.planned[ev.reg]
                self.handed[ev.reg] = [self.bufs[d.piece][d.offset : d.offset + d.end - d.start] for d in ds]
            elif isinstance(ev, Failure):
                self.failures[ev.reg] = ev.error
            elif isinstance(ev, Evicted):
                self.evicted += ev.pieces
                for pid in ev.pieces:
                    self.bufs.pop(pid, None)

    def register(self, reg) -> int:
        rid, events = self.coord.register(reg)
        self.handle(events)
        return rid

    def run(self, fail=()):
        while True:
            tasks = self.coord.take_reads()
            if not tasks:
                return
            for o in [o for task in tasks for o in task]:
                self.orders.append(o)
                if o.piece in fail:
                    self.handle(self.coord.read_failed(o.piece, StorageError(f"boom {o.path}")))
                    continue
                buf, report = read_order(self.storage, o)
                self.bufs[o.piece] = buf
                self.handle(self.coord.read_done(o.piece, report._replace(node=self.node_of(o))))

    def delivered(self, rid) -> list[tuple[int, int, np.ndarray]]:
        return [(d.start, d.end, b) for d, b in zip(self.planned[rid], self.handed[rid])]

    @property
    def bytes_read(self) -> int:
        return sum(o.end - o.start for o in self.orders)


class Worker:
    """One worker's wants, planned as its client plans them, and assembled from deliveries."""

    def __init__(self, coord: Coordinator, index, info, wants, node="n0", verify=True, **kw):
        self.index = index
        self.requests = [TensorRequest(index, n, r) for n, r in wants]
        self.plan = build_plan(self.requests, PlanOptions(workers=1, verify=False))  # as a client plans
        self.file_ids = {p: info.first_file + i for i, p in enumerate(index.data_files())}
        self.reg = Registration(needed_ranges(self.plan, self.file_ids), node, verify, **kw)

    def assemble(self, delivered) -> list[np.ndarray]:
        assembly = Assembly(self.plan, verify=False)
        placer = Placer(self.plan, assembly, self.file_ids)
        for start, end, buf in delivered:
            placer.add(start, end, buf)
        assert placer.finished()
        assert sorted(placer.completed) == list(range(len(self.requests)))
        return assembly.take_all()

    def check(self, sim: Sim, rid: int) -> int:
        """Assemble what ``rid`` was handed (in reverse order: any order works); the bytes handed."""
        got = sim.delivered(rid)
        want = fetch(self.requests)
        for a, b, r in zip(self.assemble(got[::-1]), want, self.requests):
            assert_bit_exact(a, b, r)
        return sum(len(buf) for _, _, buf in got)


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {
        "big": rng.standard_normal((256, 1024)).astype(np.float32),  # 1 MiB
        "emb": rng.integers(0, 1 << 30, (64, 512), dtype=np.int64),
        "words": np.array([b"alpha", b"", b"\xff" * 300], dtype=object),
    }
    tensors.update({f"small/{i}": np.full((3,), i, np.int32) for i in range(200)})
    prefix = write_checkpoint(str(tmp_path / "model"), tensors, num_shards=2)
    index = open_checkpoint(prefix)
    coord = Coordinator(cache_bytes=64 * MiB, chunk_bytes=MiB // 4, min_piece_bytes=16 << 10)
    info = coord.add_checkpoint(index.prefix, index)
    return coord, index, info, tensors


def test_one_worker_everything_then_a_late_one_from_the_cache(model):
    coord, index, info, tensors = model
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [(n, None) for n in tensors])
    rid = sim.register(w.reg)
    sim.run()
    w.check(sim, rid)
    read = sim.bytes_read
    assert read == coord.stats()["bytes_read"] == sum(os.path.getsize(f) for f in index.data_files())
    late = Worker(coord, index, info, [("emb", (slice(3, 9),)), ("words", None)], node="n1")
    rid2 = sim.register(late.reg)
    assert rid2 in sim.answers  # answered at registration: every byte is cached
    sim.run()
    assert sim.bytes_read == read
    late.check(sim, rid2)
    assert coord.stats()["bytes_from_cache"] > 0


def test_partitions_of_one_variable_are_read_once_each_on_its_node(model):
    coord, index, info, tensors = model
    sim = Sim(coord, index.storage)
    quarters = [Worker(coord, index, info, [("big", (slice(64 * k, 64 * k + 64),))], node=f"n{k}") for k in range(4)]
    rids = [sim.register(w.reg._replace(group="g", world_size=4)) for w in quarters[:3]]
    assert not sim.planned  # the group plans when the last arrives
    rids.append(sim.register(quarters[3].reg._replace(group="g", world_size=4)))
    assert set(sim.planned) == set(rids) and not sim.answers  # handed over at once, read later
    sim.run()
    e = index.entry("big")
    assert sim.bytes_read == e.size  # each byte once
    for w, rid in zip(quarters, rids):
        assert w.check(sim, rid) == e.size // 4  # delivered exactly its share
    # every read ran on the node of its only consumer
    assert {o.node for o in sim.orders} == {f"n{k}" for k in range(4)}
    assert coord.stats()["bytes_served"] == {f"n{k}": e.size // 4 for k in range(4)}


def test_a_partial_want_is_verified_by_reading_its_whole_entry(model):
    coord, index, info, tensors = model
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [("big", (slice(0, 10),))])
    rid = sim.register(w.reg)
    sim.run()
    w.check(sim, rid)
    assert sim.bytes_read == index.entry("big").size
    assert sum(len(b) for _, _, b in sim.delivered(rid)) < index.entry("big").size // 8


def test_without_verify_exactly_the_needed_bytes_are_read(model):
    coord, index, info, _ = model
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [("big", (slice(0, 10),))], verify=False)
    rid = sim.register(w.reg)
    sim.run()
    w.check(sim, rid)
    assert sim.bytes_read == 10 * 1024 * 4


def corrupt(index, name, at):
    e = index.entry(name)
    with open(index.data_file(e.shard_id), "r+b") as f:
        f.seek(e.offset + at)
        b = f.read(1)
        f.seek(e.offset + at)
        f.write(bytes([b[0] ^ 1]))


def test_corruption_in_an_entry_cut_into_pieces_fails_verified_workers_only(model):
    coord, index, info, _ = model
    corrupt(index, "big", 700_000)  # in the third quarter
    sim = Sim(coord, index.storage)
    halves = [Worker(coord, index, info, [("big", (slice(128 * k, 128 * k + 128),))], node=f"n{k}") for k in range(2)]
    rids = [sim.register(w.reg._replace(group="g", world_size=2)) for w in halves]
    sim.run()
    for rid in rids:  # both halves are verified together: the whole entry's CRC fails both
        err = sim.failures[rid]
        assert isinstance(err, ChecksumMismatchError) and "'big'" in str(err) and "combined" in str(err)
    unverified = Worker(coord, index, info, [("big", (slice(0, 10),))], verify=False)
    rid = sim.register(unverified.reg)
    sim.run()
    assert rid in sim.answers  # verify=False hands the bytes over
    again = Worker(coord, index, info, [("big", None)])
    rid = sim.register(again.reg)
    assert isinstance(sim.failures[rid], ChecksumMismatchError)  # known bad: fails at once


@pytest.mark.parametrize("name", ["emb", "words", "small/7"])
def test_corruption_inside_a_piece_names_the_tensor(model, name):
    coord, index, info, _ = model
    corrupt(index, name, 1)
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [(name, None)])
    rid = sim.register(w.reg)
    sim.run()
    err = sim.failures[rid]
    assert isinstance(err, ChecksumMismatchError) and repr(name) in str(err)


def test_a_failed_read_fails_its_waiters_and_is_read_again_later(model):
    coord, index, info, _ = model
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [("emb", None)])
    rid = sim.register(w.reg)
    first = coord.take_reads()
    assert first
    for o in [o for task in first for o in task]:
        sim.handle(coord.read_failed(o.piece, StorageError("boom")))
    assert isinstance(sim.failures[rid], StorageError)
    assert coord.stats()["pieces"] == 0
    rid = sim.register(w.reg)
    sim.run()
    w.check(sim, rid)


def test_cache_budget_evicts_least_recently_used_never_pinned(model):
    coord, index, info, _ = model
    coord.cache_bytes = 300 << 10  # less than "big"
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [("big", None), ("emb", None)])
    rid = sim.register(w.reg)
    sim.run()
    w.check(sim, rid)  # nothing was evicted while it waited
    assert sim.evicted and coord.stats()["cache_bytes"] <= coord.cache_bytes
    rid = sim.register(w.reg)  # evicted bytes are read again
    sim.run()
    w.check(sim, rid)
    assert sim.bytes_read > sum(index.entry(n).size for n in ("big", "emb"))
    coord.release()
    assert coord.stats()["cache_bytes"] == 0


def test_release_while_waiting_drops_after_the_answer(model):
    coord, index, info, _ = model
    sim = Sim(coord, index.storage)
    w = Worker(coord, index, info, [("emb", None)])
    rid = sim.register(w.reg)
    sim.handle(coord.release())
    sim.run()
    w.check(sim, rid)
    assert coord.stats()["cache_bytes"] == 0


def test_late_worker_on_another_node_gets_a_slice(model):
    coord, index, info, _ = model
    sim = Sim(coord, index.storage)
    everything = Worker(coord, index, info, [("big", None)], node="a")
    sim.register(everything.reg)
    sim.run()
    few = Worker(coord, index, info, [("big", (slice(0, 2),))], node="b")
    rid = sim.register(few.reg)
    [d] = sim.planned[rid]
    assert d.sliced and d.end - d.start == 2 * 1024 * 4
    few.check(sim, rid)
    same_node = Worker(coord, index, info, [("big", (slice(0, 2),))], node="a")
    rid = sim.register(same_node.reg)
    assert not any(d.sliced for d in sim.planned[rid])  # zero-copy there: no slice


def test_concurrent_workers_share_reads_in_flight(model):
    coord, index, info, tensors = model
    sim = Sim(coord, index.storage)
    ws = [Worker(coord, index, info, [(n, None) for n in tensors], node=f"n{k}") for k in range(3)]
    rids = [sim.register(w.reg) for w in ws]
    sim.run()
    assert sim.bytes_read == sum(os.path.getsize(f) for f in index.data_files())
    for w, rid in zip(ws, rids):
        w.check(sim, rid)


def test_reads_per_node_bounds_reads_in_flight(model):
    coord, index, info, tensors = model
    coord.reads_per_node = 2
    w = Worker(coord, index, info, [(n, None) for n in tensors])
    coord.register(w.reg)
    tasks = coord.take_reads()
    assert len(tasks) == 2 and coord.take_reads() == []
    assert sum(o.end - o.start for task in tasks for o in task) < sum(os.path.getsize(f) for f in index.data_files())


def test_small_pieces_share_a_read_task(model):
    coord, index, info, tensors = model
    sim = Sim(coord, index.storage)
    # ten small tensors far apart (one piece each): one read task
    names = [f"small/{i}" for i in range(0, 200, 20)]
    ws = [Worker(coord, index, info, [(n, None)], node="n0") for n in names]
    coord.min_piece_bytes = 0
    rids = [sim.register(w.reg) for w in ws]
    tasks = coord.take_reads()
    assert len(tasks) == 1 and len(tasks[0]) == len(names)
    for o in tasks[0]:
        buf, report = read_order(index.storage, o)
        sim.bufs[o.piece] = buf
        sim.handle(coord.read_done(o.piece, report._replace(node="n0")))
    for w, rid in zip(ws, rids):
        w.check(sim, rid)
    assert coord.stats()["reads_in_flight"] == 0


def test_group_timeout_and_mismatch(model):
    coord, index, info, _ = model
    w = Worker(coord, index, info, [("emb", None)])
    rid, events = coord.register(w.reg._replace(group="g", world_size=3))
    assert events == []
    _, events = coord.register(w.reg._replace(group="g", world_size=2))
    assert isinstance(events[0].error, GroupMismatchError)
    gen = coord.group_generation("g")
    [fail] = coord.expire_group("g", gen)
    assert fail.reg == rid and isinstance(fail.error, ServiceTimeoutError)
    assert "'g'" in str(fail.error) and "1 of 3" in str(fail.error)
    assert isinstance(fail.error, TimeoutError)
    assert coord.expire_group("g", gen) == []


def test_edge_combines_parts_in_any_order():
    data = np.random.default_rng(0).integers(0, 255, 1000, dtype=np.uint8)
    e = Edge(0, 1000, crc.mask(crc.value(data)))
    assert e.add(2, 600, 400, crc.value(data[600:])) is None
    assert e.add(1, 0, 600, crc.value(data[:600])) is True
    e.remove(1)
    assert e.status is None
    assert e.add(3, 0, 600, crc.value(data[:600]) ^ 1) is False


def test_overlapping_entries_are_refused(tmp_path):
    from distrestore.format import sstable
    from distrestore.format.messages import encode_entry, encode_header
    from distrestore.index import CheckpointIndex

    items = {b"": encode_header(1)}
    items[b"a"] = encode_entry(1, (4,), 0, 0, 16, 0)
    items[b"b"] = encode_entry(1, (4,), 0, 8, 16, 0)
    index = CheckpointIndex.from_bytes(str(tmp_path / "x"), sstable.build_table(sorted(items.items())))
    with pytest.raises(CorruptCheckpointError, match="share bytes"):
        file_entries(index)
