"""Planner tests: indexes built in memory, exact requests asserted, no I/O."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from distrestore.errors import CorruptCheckpointError, TensorNotFoundError, UnsupportedCheckpointError
from distrestore.format import crc, sstable
from distrestore.format.messages import encode_entry, encode_header
from distrestore.format.slices import parse_spec, slice_key
from distrestore.index import CheckpointIndex
from distrestore.plan import (
    DIRECT,
    PACKED,
    SKIP,
    STAGED,
    Copy,
    PlanOptions,
    ReadPlan,
    Segment,
    SegmentKind,
    build_plan,
)
from distrestore.restore import TensorRequest

F32, I64, STR = 1, 9, 7
P = "mem/ckpt"
D0 = f"{P}.data-00000-of-00002"
D1 = f"{P}.data-00001-of-00002"


def make_index(
    entries: dict[str, tuple], slices: dict[str, list[str]] | None = None, num_shards: int = 2
) -> CheckpointIndex:
    """entries: name -> (dtype, shape, shard, offset); sizes follow from dtype and shape.
    slices: name -> specs, each stored back to back in shard 1 from offset 0."""
    items = {b"": encode_header(num_shards)}
    ends = {1: 0}  # data file sizes: where the last tensor of each ends
    for name, (dt, shape, shard, offset) in entries.items():
        size = int(np.prod(shape, dtype=np.int64)) * (4 if dt == F32 else 8)
        items[name.encode()] = encode_entry(dt, shape, shard, offset, size, crc.mask(0))
        ends[shard] = max(ends.get(shard, 0), offset + size)
    for name, specs in (slices or {}).items():
        offset = 0
        full_shape = None
        exts = []
        for spec in specs:
            full_shape, ext = parse_spec(spec)
            exts.append(ext)
            shape = tuple(d if n == -1 else n for (s, n), d in zip(ext, full_shape))
            size = int(np.prod(shape)) * 4
            items[slice_key(name, ext)] = encode_entry(F32, shape, 1, offset, size, crc.mask(0))
            offset += size
            ends[1] = max(ends[1], offset)
        items[name.encode()] = encode_entry(F32, full_shape, slices=exts)
    return CheckpointIndex.from_bytes(P, sstable.build_table(sorted(items.items())), file_sizes=ends)


def plan(index, wants, **opts) -> ReadPlan:
    options = PlanOptions(**{"workers": 1, **opts})
    return build_plan([TensorRequest(index, n, r) for n, r in wants], options)


def segments_at(p: ReadPlan):
    """(request, segment, absolute file offset of the segment) for every segment."""
    for r in p.requests:
        pos = r.start
        for s in r.segments:
            yield r, s, pos
            pos += s.length


def test_small_neighbours_share_one_packed_request():
    idx = make_index({"a": (F32, (4,), 0, 0), "b": (F32, (2, 2), 0, 16), "c": (F32, (3,), 0, 32)})
    p = plan(idx, [("a", None), ("c", None), ("b", None)])
    assert len(p.packed) == 1
    g = p.packed[0]
    assert (g.file, g.start, g.size) == (D0, 0, 44)
    assert g.outputs.tolist() == [0, 2, 1] and g.offsets.tolist() == [0, 16, 32]
    assert p.requests == (p.requests[0],)
    r = p.requests[0]
    assert (r.file, r.start, r.end) == (D0, 0, 44)
    assert r.segments == (Segment(44, PACKED, 0, 0, -1, 0),)
    assert p.bytes_to_read == p.bytes_needed == 44


@pytest.mark.parametrize("gap", [0, 16])
def test_whole_checkpoint_packs_as_the_same_tensors_asked_by_name_do(gap):
    # a whole-checkpoint restore plans over the index's columns as they are (no per-row copies);
    # it must group exactly as a request naming the same tensors in another order, with file
    # order unlike name order, two files and a 16-byte hole between "e" and "b"
    spec = {
        "a": (F32, (4,), 1, 16),
        "b": (F32, (4,), 0, 48),
        "c": (F32, (4,), 0, 0),
        "d": (F32, (4,), 1, 0),
        "e": (F32, (4,), 0, 16),
    }
    idx = make_index(spec)
    names, shuffled = sorted(spec), ["d", "b", "e", "a", "c"]
    whole = plan(idx, [(n, None) for n in names], max_gap_bytes=gap)
    asked = plan(idx, [(n, None) for n in shuffled], max_gap_bytes=gap)

    def groups(p, order):
        return [(g.file, g.start, g.size, [order[o] for o in g.outputs.tolist()], g.offsets.tolist()) for g in p.packed]

    expect = [(D0, 48, 16, ["b"], [0]), (D0, 0, 32, ["c", "e"], [0, 16]), (D1, 0, 32, ["d", "a"], [0, 16])]
    if gap:  # the hole is joined: one group per file
        expect = [(D0, 0, 64, ["c", "e", "b"], [0, 16, 48]), (D1, 0, 32, ["d", "a"], [0, 16])]
    assert sorted(groups(whole, names)) == sorted(groups(asked, shuffled)) == sorted(expect)


def test_unwanted_bytes_between_tensors_are_not_read():
    idx = make_index({"a": (F32, (4,), 0, 0), "skip": (F32, (4,), 0, 16), "c": (F32, (4,), 0, 32)})
    p = plan(idx, [("a", None), ("c", None)])
    assert [(r.start, r.end) for r in p.requests] == [(0, 16), (32, 48)]
    assert p.bytes_to_read == p.bytes_needed == 32


def test_gap_joining_when_allowed_reads_gap_once_as_skip():
    idx = make_index({"a": (F32, (4,), 0, 0), "skip": (F32, (4,), 0, 16), "c": (F32, (4,), 0, 32)})
    p = plan(idx, [("a", None), ("c", None)], max_gap_bytes=16, pack_bytes=0)
    (r,) = p.requests
    assert (r.start, r.end) == (0, 48)
    assert [s.kind for s in r.segments] == [DIRECT, SKIP, DIRECT]
    assert p.bytes_to_read == 48 and p.bytes_needed == 32


def test_big_tensor_is_split_across_workers_and_read_directly():
    idx = make_index({"big": (F32, (1024, 1024), 1, 100)})  # 4 MiB
    p = plan(idx, [("big", None)], workers=4, min_request_bytes=256 * 1024, max_request_bytes=2**20)
    assert all(r.file == D1 for r in p.requests)
    # 4 MiB over 4 workers, 4 requests each -> 256 KiB chunks, contiguous, each straight into the output
    assert [(r.start, r.end) for r in p.requests] == [(100 + i * 2**18, 100 + (i + 1) * 2**18) for i in range(16)]
    for i, r in enumerate(p.requests):
        assert r.segments == (Segment(2**18, DIRECT, 0, i * 2**18, 0, i * 2**18),)
    assert p.entries[0].verify  # every byte is read: the CRC is checked
    assert sorted(len(w) for w in p.assign(4)) == [4, 4, 4, 4]


# verify=False in the next two: they pin the exact bytes a region needs (with verify, the
# default, the rest of the entry is read too, as the verified twins below show)
def test_row_block_is_one_contiguous_range_into_the_output():
    idx = make_index({"w": (F32, (10, 6), 0, 0)})
    p = plan(idx, [("w", (slice(2, 5),))], pack_bytes=0, verify=False)
    (r,) = p.requests
    assert (r.start, r.end) == (2 * 24, 5 * 24)
    assert r.segments == (Segment(72, DIRECT, 0, 0, 0, 48),)
    assert p.outputs[0].shape == (3, 6)
    assert not p.entries[0].verify  # part of an entry: its CRC covers bytes we do not read
    assert p.bytes_to_verify == 0 and "verify=False" in p.summary()


def test_column_block_reads_covering_rows_once_and_copies_out():
    idx = make_index({"w": (F32, (10, 6), 0, 0)})
    p = plan(idx, [("w", (slice(None), slice(1, 3)))], verify=False)
    (r,) = p.requests
    # first element (0, 1) to last (9, 2): one covering range, read into a staging buffer
    assert (r.start, r.end) == (4, (9 * 6 + 3) * 4)
    assert r.segments[0].kind == STAGED
    (st,) = p.staging
    assert st.copies == (Copy(0, ((0, 10), (1, 3))),)


def test_verified_row_block_reads_the_rest_of_its_entry_only_to_check_it():
    idx = make_index({"w": (F32, (10, 6), 0, 0)})
    p = plan(idx, [("w", (slice(2, 5),))], pack_bytes=0)
    (r,) = p.requests  # the whole entry, in one request: the block lands in the output
    assert (r.start, r.end) == (0, 240)
    assert r.segments == (
        Segment(48, SKIP, -1, 0, 0, 0),
        Segment(72, DIRECT, 0, 0, 0, 48),
        Segment(120, SKIP, -1, 0, 0, 120),
    )
    assert p.entries[0].verify
    assert (p.bytes_to_read, p.bytes_needed, p.bytes_to_verify) == (240, 72, 168)
    assert "240 B to read (72 B needed, 168 B read only to verify)" in p.summary()


def test_verified_column_block_reads_the_rows_around_its_covering_range():
    idx = make_index({"w": (F32, (10, 6), 0, 0)})
    p = plan(idx, [("w", (slice(None), slice(1, 3)))])
    (r,) = p.requests
    assert [(s.kind, s.length, s.entry_offset) for s in r.segments] == [
        (SKIP, 4, 0),
        (STAGED, (9 * 6 + 3) * 4 - 4, 4),
        (SKIP, 240 - (9 * 6 + 3) * 4, (9 * 6 + 3) * 4),
    ]
    assert p.entries[0].verify and p.bytes_to_verify == 4 + 12


def test_verified_region_of_a_huge_entry_is_read_in_bounded_requests():
    idx = make_index({"w": (F32, (2**20, 1024), 0, 0)})  # a 4 GiB stored entry, one row wanted
    p = plan(idx, [("w", (slice(5, 6),))], max_request_bytes=16 * 2**20)
    assert p.bytes_needed == 4096 and p.bytes_to_read == 4 * 2**30
    assert max(r.nbytes for r in p.requests) <= 16 * 2**20
    # O(entry size / request size) requests (each range cut on its own, then joined)
    assert 256 <= len(p.requests) <= 256 + 2
    covered = sorted((s.entry_offset, s.length) for _, s, _ in segments_at(p))
    assert covered[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(covered, covered[1:]))


def test_two_column_blocks_of_one_tensor_share_one_read():
    idx = make_index({"w": (F32, (10, 6), 0, 0)})
    p = plan(idx, [("w", (slice(None), slice(0, 3))), ("w", (slice(None), slice(3, 6)))])
    assert len(p.requests) == 1 and p.requests[0].nbytes == 240
    (st,) = p.staging
    assert sorted(c.output for c in st.copies) == [0, 1]
    assert p.entries[0].verify


def test_repartition_five_row_slices_into_two_reads_each_byte_once():
    specs = [f"100 8 {i * 20},20:0,8" for i in range(5)]
    idx = make_index({}, {"emb": specs})
    p = plan(idx, [("emb", (slice(0, 50),)), ("emb", (slice(50, 100),))], pack_bytes=0)
    assert p.bytes_to_read == p.bytes_needed == 100 * 8 * 4
    direct = sorted((s.target, s.offset, s.length, pos) for _, s, pos in segments_at(p))
    # slice [40, 60) straddles the two outputs: its first 10 rows go to output 0, the rest to 1
    assert (0, 40 * 32, 10 * 32, 2 * 20 * 32) in direct
    assert (1, 0, 10 * 32, 2 * 20 * 32 + 10 * 32) in direct
    assert all(s.kind == DIRECT for r in p.requests for s in r.segments)
    assert all(e.verify for e in p.entries)  # every stored slice is read whole


def test_column_partitioned_checkpoint_into_full_tensor():
    idx = make_index({}, {"w": ["4 7 0,4:0,4", "4 7 0,4:4,3"]})
    p = plan(idx, [("w", None)])
    assert p.bytes_to_read == p.bytes_needed == 4 * 7 * 4
    assert sorted(c.box for st in p.staging for c in st.copies) == [((0, 4), (0, 4)), ((0, 4), (4, 7))]


def test_missing_slices_and_overlaps_are_errors():
    idx = make_index({}, {"w": ["10 3 0,4:-", "10 3 5,5:-"]})
    with pytest.raises(CorruptCheckpointError, match="sufficient slices"):
        plan(idx, [("w", None)])
    plan(idx, [("w", (slice(0, 4),))])  # a region the slices do cover is fine
    idx = make_index({}, {"w": ["10 3 0,6:-", "10 3 5,5:-"]})
    with pytest.raises(CorruptCheckpointError, match="overlapping"):
        plan(idx, [("w", None)])


def test_strings_are_staged_whole_and_verified():
    items = {b"": encode_header(1), b"s": encode_entry(STR, (3,), 0, 0, 20, 123)}
    idx = CheckpointIndex.from_bytes("mem/s", sstable.build_table(sorted(items.items())), file_sizes={0: 20})
    p = build_plan([TensorRequest(idx, "s")], PlanOptions(workers=1))
    (r,) = p.requests
    assert (r.start, r.end) == (0, 20) and r.segments[0].kind == STAGED
    assert p.entries[0].verify


def test_wrong_size_and_unknown_names_and_variants():
    items = {
        b"": encode_header(1),
        b"x": encode_entry(F32, (3,), 0, 0, 10, 0),
        b"v": encode_entry(21, (2,), 0, 10, 10, 0),
    }
    idx = CheckpointIndex.from_bytes("mem/bad", sstable.build_table(sorted(items.items())), file_sizes={0: 20})
    with pytest.raises(CorruptCheckpointError, match="invalid size.*'x'"):
        build_plan([TensorRequest(idx, "x")])
    with pytest.raises(TensorNotFoundError, match="nope"):
        build_plan([TensorRequest(idx, "nope")])
    with pytest.raises(UnsupportedCheckpointError, match="VARIANT"):
        build_plan([TensorRequest(idx, "v")])


def test_request_size_never_exceeds_limit_and_plan_pickles():
    idx = make_index({"big": (F32, (1000, 100), 0, 0), **{f"s{i}": (F32, (10,), 1, 40 * i) for i in range(50)}})
    p = plan(
        idx,
        [("big", None)] + [(f"s{i}", None) for i in range(50)],
        max_request_bytes=50_000,
        min_request_bytes=1000,
        pack_bytes=1000,
    )
    assert max(r.nbytes for r in p.requests) <= 50_000
    assert p.bytes_to_read == p.bytes_needed == 400_000 + 50 * 40
    # segments tile each request exactly
    for r in p.requests:
        assert sum(s.length for s in r.segments) == r.nbytes
    again = pickle.loads(pickle.dumps(p))
    assert again == p
    kinds = {s.kind for r in again.requests for s in r.segments}
    assert kinds == {DIRECT, PACKED} and all(type(k) is SegmentKind for k in kinds)
    text = p.summary(workers=2)
    assert "ReadPlan: 51 outputs" in text and D0 in text and "per worker (2)" in text


def test_segment_kinds_are_one_enum():
    assert [DIRECT, STAGED, SKIP, PACKED] == list(SegmentKind) == [0, 1, 2, 3]
    assert SegmentKind.PACKED.name == "PACKED"


def test_budget_caps_request_size():
    opts = PlanOptions.for_storage(local=True, workers=4, max_inflight_bytes=100_000)
    assert opts.max_request_bytes <= 100_000 and opts.pack_bytes <= 100_000
