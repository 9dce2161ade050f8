"""The assembly (``distrestore.assemble``), driven the way an executor drives a read sink: a
checkpoint written to disk, a plan built over it, each request read by hand into the buffers the
assembly gives and reported complete."""

from __future__ import annotations

import numpy as np
import pytest

import distrestore as dr
from distrestore.assemble import Assembly
from distrestore.errors import ChecksumMismatchError
from distrestore.execute.sink import ReadSink
from distrestore.index import open_checkpoint
from distrestore.plan import DIRECT, PACKED, SKIP, STAGED, PlanOptions, SegmentKind, build_plan
from distrestore.restore import TensorRequest

TENSORS = {
    "big": np.arange(100_000, dtype=np.float32).reshape(1000, 100),  # 400 KB: read straight in
    "small": np.arange(12, dtype=np.int64).reshape(3, 4),  # packed
    "tiny": np.float64(2.5),  # packed
    "words": np.array([b"a", b"bc", b""], dtype=object),  # staged: strings decode whole
}


@pytest.fixture
def ckpt(tmp_path):
    return open_checkpoint(dr.save_tensors(str(tmp_path / "ckpt"), TENSORS))


def make(index, wants, *, verify=True, allocate=None, **opts):
    requests = [TensorRequest(index, n, r) for n, r in wants]
    plan = build_plan(requests, PlanOptions(**{"workers": 1, **opts}))
    return Assembly(plan, verify=verify, names=[n for n, _ in wants], allocate=allocate)


def drive(sink: ReadSink, storage) -> list[int]:
    """An executor's loop, one request at a time: every output index it completes, in order."""
    done = list(sink.ready)
    for req in sink.plan.requests:
        views = sink.buffers(req)
        crcs = storage.readinto(req.file, req.start, views)
        done += sink.complete(req, sink.checksums(req, views, crcs))
    return done


def test_every_output_completes_once_with_the_saved_value(ckpt):
    wants = [(n, None) for n in TENSORS]
    a = make(ckpt, wants)
    done = drive(a, ckpt.storage)
    assert sorted(done) == list(range(len(wants)))
    for i, (name, _) in enumerate(wants):
        got = a.take(i)
        want = TENSORS[name]
        assert got.shape == np.shape(want)
        assert got.tolist() == np.asarray(want).tolist(), name


def test_regions_of_one_entry_are_copied_out_and_verified(ckpt):
    wants = [("big", (slice(0, 1000), slice(10, 20))), ("big", (slice(500, 600), slice(0, 100)))]
    a = make(ckpt, wants)
    kinds = {s.kind for r in a.plan.requests for s in r.segments}
    assert STAGED in kinds  # a column block is not contiguous in the file
    assert sorted(drive(a, ckpt.storage)) == [0, 1]
    out = a.take_all()
    np.testing.assert_array_equal(out[0], TENSORS["big"][:, 10:20])
    np.testing.assert_array_equal(out[1], TENSORS["big"][500:600])


def test_allocator_given_at_construction_holds_every_buffer(ckpt):
    made: dict[tuple, np.ndarray] = {}

    def allocate(kind, target, nbytes):
        assert isinstance(kind, SegmentKind)
        buf = made[(kind, target)] = np.zeros(nbytes, np.uint8)
        return buf

    wants = [(n, None) for n in ("big", "small", "tiny", "words")]
    a = make(ckpt, wants, allocate=allocate)
    drive(a, ckpt.storage)
    out = a.take_all()
    assert {k for k, _ in made} == {DIRECT, PACKED, STAGED}
    assert np.shares_memory(out[0], made[(DIRECT, 0)])  # the output itself lives there
    packed = [b for (k, _), b in made.items() if k == PACKED]
    assert any(np.shares_memory(out[1], b) for b in packed)  # small tensors: views of the group
    np.testing.assert_array_equal(out[0], TENSORS["big"])


def test_segment_checks_follow_verify_and_skip_gaps(ckpt):
    # two whole tensors with an unwanted one between them, joined into one request across it:
    # the gap is read but not checked
    opts = dict(max_gap_bytes=1 << 20, max_request_bytes=1 << 30, pack_bytes=0)
    checked = make(ckpt, [("big", None), ("tiny", None)], **opts)
    [req] = checked.plan.requests
    assert [s.kind for s in req.segments] == [DIRECT, SKIP, DIRECT]
    assert checked.segment_checks(req) == (True, False, True)
    unverified = make(ckpt, [("big", None), ("tiny", None)], verify=False, **opts)
    assert unverified.segment_checks(unverified.plan.requests[0]) == (False, False, False)
    assert sorted(drive(checked, ckpt.storage)) == [0, 1]


def test_a_corrupt_byte_is_named_and_nothing_completes(ckpt, tmp_path):
    a = make(ckpt, [("big", None)], max_request_bytes=1 << 30)
    [req] = a.plan.requests
    views = a.buffers(req)
    ckpt.storage.readinto(req.file, req.start, views)
    views[0][1234] ^= 0xFF
    with pytest.raises(ChecksumMismatchError, match="'big'") as info:
        a.complete(req, a.checksums(req, views))
    assert req.file in str(info.value)


def test_tensor_names_for_messages(ckpt):
    a = make(ckpt, [(n, None) for n in TENSORS], max_gap_bytes=1 << 30, max_request_bytes=1 << 30)
    [req] = a.plan.requests
    assert a.tensor_names(req, limit=2) == "'big', 'small' and 2 more"
    assert a.tensor_names(req) == "'big', 'small', 'tiny' and 1 more"


def test_take_hands_over_each_output(ckpt):
    a = make(ckpt, [("small", None), ("big", (slice(0, 0),))])
    assert a.ready == [1]  # an empty region: complete before any read
    drive(a, ckpt.storage)
    first = a.take(0)
    assert first.tolist() == TENSORS["small"].tolist()
    assert a.take(1).shape == (0, 100)
