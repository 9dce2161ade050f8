"""Region reads are verified: with ``verify=True`` (the default) no byte comes back unless a
checked CRC32C covers it.

TF's CRC32C covers whole stored entries, so a region that needs part of an entry reads the rest of
it too, only to checksum it (as TF's ``RestoreV2`` with a slice spec does); regions that together
cover an entry need nothing extra. Each case below flips single bytes of the stored entries a
region touches (inside and outside the region) in a copy of a TF-written fixture and expects
``ChecksumMismatchError`` naming the tensor, the file and the entry's byte range, every time;
``verify=False`` reads exactly the bytes the region needs (counted with a counting storage).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from verify_support import flip, flip_positions, touched

import distrestore as dr
from distrestore.assemble import Assembly
from distrestore.format.slices import box_from_region, box_size, intersect, to_box
from distrestore.plan import PlanOptions, build_plan
from distrestore.storage.wrappers import CountingStorage

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
SHARDED = "tf1_sharded/model.ckpt-7"
ALL = "all_dtypes/all"
FIXED_DTYPES = sorted(n for n, _ in dr.list_variables(str(FIXTURES / ALL)) if n.startswith("dtype/"))  # all 30

R = slice  # regions below read as R(a, b) per dimension


def _bound(v) -> str:
    return "" if v is None else str(v)


def _region_id(region) -> str:
    if region is None:
        return "whole"
    return "[" + ",".join(f"{_bound(s.start)}:{_bound(s.stop)}" for s in region) + "]"


# (fixture prefix, [(tensor, region), ...] fetched together as one plan)
CASES = {
    "row-block": (SHARDED, [("scope1/w", (R(1, 2),))]),
    "column-block": (SHARDED, [("scope1/w", (R(None), R(1, 3)))]),
    "single-element": (SHARDED, [("scope1/w", (R(2, 3), R(3, 4)))]),
    "whole": (SHARDED, [("scope1/w", None)]),
    "whole-as-region": (SHARDED, [("scope1/w", (R(None), R(None)))]),
    "scalar-region": (ALL, [("scalar/float64", ())]),
    "scalar-whole": (ALL, [("scalar/int64", None)]),
    "rank3-block": (ALL, [("rank3/float32", (R(1, 2), R(0, 2), R(1, 3)))]),
    "parts-one": (SHARDED, [("big/part5", (R(25, 35),))]),
    "parts-spanning": (SHARDED, [("big/part5", (R(15, 25),))]),
    "parts-column-block": (SHARDED, [("big/part5", (R(10, 50), R(2, 6)))]),
    "parts-last-row": (SHARDED, [("big/part5", (R(99, 100),))]),
    "column-parts-block": (SHARDED, [("part_cols", (R(1, 3), R(2, 6)))]),
    "int64-parts": (SHARDED, [("part_int64", (R(2, 5),))]),
    "repartition-5to2": (SHARDED, [("big/part5", (R(0, 50),)), ("big/part5", (R(50, 100),))]),
    "repartition-5to4": (SHARDED, [("big/part5", (R(25 * i, 25 * i + 25),)) for i in range(4)]),
    "repartition-5to3": (SHARDED, [("big/part5", (R(a, b),)) for a, b in ((0, 34), (34, 67), (67, 100))]),
    "repartition-columns": (SHARDED, [("big/part5", (R(None), R(0, 4))), ("big/part5", (R(None), R(4, 8)))]),
    "repartition-subset": (SHARDED, [("big/part5", (R(0, 30),)), ("big/part5", (R(30, 50),))]),
    "string-region": (ALL, [("string/2d", (R(1, 2), R(0, 2)))]),
    "string-sharded": (SHARDED, [("scope2/nested/label", ())]),
    **{
        f"{name}-{kind}": (ALL, [(name, region)])
        for name in FIXED_DTYPES
        for kind, region in (("row", (R(1, 2),)), ("column", (R(None), R(1, 2))), ("element", (R(0, 1), R(2, 3))))
    },
}


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> Path:
    """A private copy of the fixtures these tests corrupt (each flip is undone at once)."""
    root = tmp_path_factory.mktemp("verified")
    for d in ("tf1_sharded", "all_dtypes"):
        shutil.copytree(FIXTURES / d, root / d)
    return root


def requests(index, wanted):
    return [dr.TensorRequest(index, n, r) for n, r in wanted]


@pytest.mark.parametrize("case", list(CASES))
def test_every_flipped_byte_of_a_touched_entry_is_caught(copies, case):
    prefix, wanted = CASES[case]
    pristine = dr.fetch(requests(dr.open_checkpoint(str(FIXTURES / prefix)), wanted))
    index = dr.open_checkpoint(str(copies / prefix))
    reqs = requests(index, wanted)
    entries = {}
    for name, region in wanted:
        for file, entry, box in touched(index, name, region):
            entries.setdefault((file, entry.offset), (file, entry, box, name, []))[4].append(
                box_from_region(region, index.entry(name).shape)
            )
    assert entries
    flips = 0
    for file, entry, box, name, wants in entries.values():
        for pos in flip_positions(entry, box, wants):
            flip(file, pos)
            try:
                with pytest.raises(dr.ChecksumMismatchError) as err:
                    dr.fetch(reqs)
            finally:
                flip(file, pos)
            msg = str(err.value)
            where = f"{file} bytes [{entry.offset}, {entry.offset + entry.size})"
            assert repr(name) in msg and where in msg, (pos, msg)
            flips += 1
    assert flips >= 2 * len(entries)
    for got, want in zip(dr.fetch(reqs), pristine):  # undone: right again
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes() if got.dtype != object else list(got.flat) == list(want.flat)


def test_empty_region_reads_nothing_and_has_nothing_to_verify(copies):
    """A region with no elements returns no byte, so none needs a checksum: nothing is read,
    even from a corrupt entry. (TF has no equivalent: its slice specs refuse empty extents.)"""
    file, entry, _ = touched(dr.open_checkpoint(str(copies / SHARDED)), "scope1/w", None)[0]
    storage = CountingStorage()
    index = dr.open_checkpoint(str(copies / SHARDED), storage=storage)
    storage.reset()
    flip(file, entry.offset)
    try:
        got = dr.fetch(requests(index, [("scope1/w", (R(1, 1),)), ("big/part5", (R(40, 40), R(None)))]))
    finally:
        flip(file, entry.offset)
    assert [g.shape for g in got] == [(0, 4), (0, 8)]
    assert storage.data_requests() == []


def test_untouched_parts_are_not_read():
    """Corruption in a stored part the region does not touch is not seen (TF reads only the
    parts a slice intersects too): the region reads its own parts, whole, and nothing else."""
    storage = CountingStorage()
    index = dr.open_checkpoint(str(FIXTURES / SHARDED), storage=storage)
    storage.reset()
    dr.fetch(requests(index, [("big/part5", (R(15, 25),))]))
    parts = touched(index, "big/part5", (R(15, 25),))
    assert len(parts) == 2
    assert _merged(storage.data_requests()) == _merged((f, e.offset, e.offset + e.size) for f, e, _ in parts)


def _merged(ranges) -> list[tuple[str, int, int]]:
    """Byte ranges (file, start, end) with neighbours joined."""
    out: list[tuple[str, int, int]] = []
    for f, a, b in sorted(ranges):
        if out and out[-1][0] == f and out[-1][2] == a:
            out[-1] = (f, out[-1][1], b)
        else:
            out.append((f, a, b))
    return out


# -- what it costs -----------------------------------------------------------------------------


def _needed_bytes(index, wanted) -> int:
    return sum(box_size(box_from_region(r, index.entry(n).shape)) * index.entry(n).dtype.itemsize for n, r in wanted)


@pytest.mark.parametrize(
    "wanted",
    [
        [("scope1/w", (R(1, 2),))],
        [("big/part5", (R(15, 25),))],
        [("big/part5", (R(99, 100),)), ("part_int64", (R(2, 5),))],
        [("big/part5", (R(0, 30),)), ("big/part5", (R(30, 50),))],
    ],
    ids=["row-block", "parts-spanning", "two-tensors", "subset"],
)
def test_unverified_region_reads_exactly_the_needed_bytes(wanted):
    storage = CountingStorage()
    index = dr.open_checkpoint(str(FIXTURES / SHARDED), storage=storage)
    storage.reset()
    got = dr.fetch(requests(index, wanted), verify=False)
    needed = _needed_bytes(index, wanted)
    assert sum(b - a for _, a, b in storage.data_requests()) == needed
    plan = dr.plan_requests(requests(index, wanted), verify=False)
    assert plan.bytes_to_read == plan.bytes_needed == needed and plan.bytes_to_verify == 0
    assert "verify=False" in plan.summary()
    for g, w in zip(got, dr.fetch(requests(dr.open_checkpoint(str(FIXTURES / SHARDED)), wanted))):
        assert g.tobytes() == w.tobytes()


def test_verified_region_reads_its_entries_whole_and_says_so():
    storage = CountingStorage()
    index = dr.open_checkpoint(str(FIXTURES / SHARDED), storage=storage)
    wanted = [("big/part5", (R(15, 25),)), ("scope1/w", (R(1, 2),))]
    plan = dr.plan_requests(requests(index, wanted))
    whole = sum(e.size for n, r in wanted for _, e, _ in touched(index, n, r))
    needed = _needed_bytes(index, wanted)
    assert (plan.bytes_to_read, plan.bytes_needed, plan.bytes_to_verify) == (whole, needed, whole - needed)
    assert f"({needed} B needed, {whole - needed} B read only to verify)" in plan.summary()
    storage.reset()
    dr.fetch(requests(index, wanted))
    assert sum(b - a for _, a, b in storage.data_requests()) == whole


@pytest.mark.parametrize("case", ["repartition-5to2", "repartition-5to4", "repartition-5to3", "repartition-columns"])
def test_regions_that_cover_their_entries_read_each_byte_once(case):
    """A re-partition whose parts together cover every stored entry: the parts' CRCs combine,
    nothing extra is read (bytes read / bytes needed = 1.00) and every entry is checked."""
    prefix, wanted = CASES[case]
    storage = CountingStorage()
    index = dr.open_checkpoint(str(FIXTURES / prefix), storage=storage)
    plan = dr.plan_requests(requests(index, wanted))
    assert plan.bytes_to_verify == 0 and plan.bytes_to_read == plan.bytes_needed == 100 * 8 * 4
    assert all(e.verify for e in plan.entries)
    storage.reset()
    dr.fetch(requests(index, wanted))
    reads = sorted(storage.data_requests())
    assert sum(b - a for _, a, b in reads) == 100 * 8 * 4
    for (f1, _, b1), (f2, a2, _) in zip(reads, reads[1:]):
        assert f1 != f2 or b1 <= a2  # no byte twice


def test_a_verify_false_plan_is_refused_by_a_verifying_assembly():
    index = dr.open_checkpoint(str(FIXTURES / SHARDED))
    plan = build_plan(requests(index, [("scope1/w", (R(1, 2),))]), PlanOptions(workers=1, verify=False))
    with pytest.raises(ValueError, match="scope1/w.*verify=True"):
        Assembly(plan)
    Assembly(plan, verify=False)


# -- TF, the oracle ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _spec(shape, region) -> str:
    dims = " ".join(map(str, shape))
    box = box_from_region(region, shape)
    parts = ":".join("-" if (a, b) == (0, d) else f"{a},{b - a}" for (a, b), d in zip(box, shape))
    return f"{dims} {parts}"


TF_SLICES = [
    ("scope1/w", (R(1, 2),)),
    ("scope1/w", (R(None), R(1, 3))),
    ("big/part5", (R(15, 25),)),
    ("big/part5", (R(10, 50), R(2, 6))),
    ("part_cols", (R(1, 3), R(2, 6))),
    ("part_int64", (R(2, 5),)),
]


@pytest.mark.parametrize("name, region", TF_SLICES, ids=[f"{n}{_region_id(r)}" for n, r in TF_SLICES])
def test_tf_restore_v2_with_a_slice_spec_agrees(tf, copies, name, region):
    """On the same corrupted copy, TF's RestoreV2 with a slice spec raises DataLossError exactly
    where we raise ChecksumMismatchError; a flip in a part the slice does not touch is missed by
    both, and the values agree."""
    prefix = str(copies / SHARDED)
    index = dr.open_checkpoint(prefix)
    entry = index.entry(name)
    spec = _spec(entry.shape, region)

    def theirs():
        (t,) = tf.raw_ops.RestoreV2(
            prefix=prefix, tensor_names=[name], shape_and_slices=[spec], dtypes=[tf.as_dtype(entry.dtype.name)]
        )
        return t.numpy()

    def ours():
        (a,) = dr.fetch([dr.TensorRequest(index, name, region)])
        return a

    np.testing.assert_array_equal(ours(), theirs())
    want = box_from_region(region, entry.shape)
    for file, stored, box in touched(index, name, region):
        for pos in flip_positions(stored, box, [want]):
            flip(file, pos)
            try:
                with pytest.raises(dr.ChecksumMismatchError):
                    ours()
                with pytest.raises(tf.errors.DataLossError):
                    theirs()
            finally:
                flip(file, pos)
    others = [to_box(s, entry.shape) for s in entry.slices]
    for s, box in zip(entry.slices, others):
        if intersect(box, want) is None:  # a part the region does not touch
            stored = index.slice_entry(name, s)
            file = index.data_file(stored.shard_id)
            flip(file, stored.offset)
            try:
                np.testing.assert_array_equal(ours(), theirs())
            finally:
                flip(file, stored.offset)


# -- executors and storages -------------------------------------------------------------------


def test_remote_region_reads_are_verified(remote, tmp_path):
    shutil.copytree(FIXTURES / "tf1_sharded", tmp_path / "c")
    index = dr.open_checkpoint(str(tmp_path / SHARDED.replace("tf1_sharded", "c")))
    region = (R(15, 25),)
    (file, entry, _), _ = touched(index, "big/part5", region)
    flip(file, entry.offset)  # a byte the region does not need (row 0 of part [0, 20))
    url, so = remote.upload(tmp_path / "c")
    prefix = url.rstrip("/") + "/model.ckpt-7"
    where = re.escape(f"bytes [{entry.offset}, {entry.offset + entry.size})")
    with pytest.raises(dr.ChecksumMismatchError, match=where):
        dr.fetch([dr.TensorRequest(dr.open_checkpoint(prefix, storage_options=so), "big/part5", region)])
    counting = CountingStorage(dr.open_checkpoint(prefix, storage_options=so).storage)
    index = dr.open_checkpoint(prefix, storage=counting)
    counting.reset()
    (got,) = dr.fetch([dr.TensorRequest(index, "big/part5", region)], verify=False)
    assert sum(b - a for _, a, b in counting.data_requests()) == 10 * 8 * 4
    (want,) = dr.fetch([dr.TensorRequest(dr.open_checkpoint(str(FIXTURES / SHARDED)), "big/part5", region)])
    assert got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def ray_executors(ray_local):
    from distrestore.ray import RayExecutor

    made = {
        # actors read into their own buffers and ship the needed bytes back (SKIP runs stay)
        "shipped": RayExecutor(local_reads="actors", shared_memory=False, map_local=False),
        # actors write into the driver's shared-memory arena, from a mapping of the file
        "arena": RayExecutor(local_reads="actors"),
        # local files on the driver's node: read by the driver itself
        "driver": RayExecutor(),
    }
    yield made
    for ex in made.values():
        ex.close()


@pytest.mark.parametrize("route", ["shipped", "arena", "driver"])
def test_ray_region_reads_are_verified(copies, ray_executors, route):
    ex = ray_executors[route]
    wanted = [("big/part5", (R(37, 38),)), ("part_cols", (R(1, 3), R(2, 6))), ("scope1/w", (R(None), R(1, 3)))]
    pristine = dr.fetch(requests(dr.open_checkpoint(str(FIXTURES / SHARDED)), wanted))
    index = dr.open_checkpoint(str(copies / SHARDED))
    for got, want in zip(dr.fetch(requests(index, wanted), executor=ex), pristine):
        assert got.tobytes() == want.tobytes()
    for name, region in wanted:
        file, entry, box = touched(index, name, region)[0]
        for pos in flip_positions(entry, box, [box_from_region(region, index.entry(name).shape)]):
            flip(file, pos)
            try:
                with pytest.raises(dr.ChecksumMismatchError, match=re.escape(repr(name))):
                    dr.fetch(requests(index, wanted), executor=ex)
            finally:
                flip(file, pos)
