"""The head of a remote data file, asked for with its index (``distrestore/storage/early.py``).

Real S3 (moto) and GCS (fake-gcs-server) behind the fault proxy, whose ``hold`` proves the order
on the wire: the index is answered only once the data file's GET has arrived. The proxy's Range
log shows each byte asked for once, and faults on that one GET (errors, resets, cut bodies,
stalls) show the restore asking for those bytes again and staying bit-exact.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest
from checks import assert_bit_exact
from fault_fixtures import Faulty

import distrestore as dr
from distrestore.storage import early
from distrestore.storage.early import Chunks, EarlyRead
from distrestore.storage.streaming import Sink

DATA = "m.data-00000-of-00001"
HEAD, CELL = 300_001, 100_000  # not multiples of anything the planner or the tensors use
CELLS = [(0, 100_000), (100_000, 200_000), (200_000, 300_000), (300_000, HEAD)]


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    """A checkpoint of one data file, ~1 MiB: 40 tensors of 24 KiB."""
    rng = np.random.default_rng(5)
    tensors = {f"layer_{i:02d}/w": rng.standard_normal((96, 64)).astype(np.float32) for i in range(40)}
    root = tmp_path_factory.mktemp("single")
    dr.save_tensors(str(root / "m"), tensors)
    return root, tensors, (root / DATA).stat().st_size


@pytest.fixture
def small_head(monkeypatch):
    monkeypatch.setattr(early, "HEAD_BYTES", HEAD)
    monkeypatch.setattr(early, "HEAD_CELL", CELL)


def _is_data_get(method: str, path: str) -> bool:
    """A GET of the data file's bytes (not of its size: a HEAD on S3, a metadata GET on GCS)."""
    return method == "GET" and DATA in path and ("alt=media" in path or "/storage/v1/" not in path)


def _every_cell_sent():
    """A ``hold`` condition: true once a GET of the data file's bytes has arrived for every cell
    of the head (the proxy calls it from its connection threads)."""
    seen = []

    def until(method: str, path: str) -> bool:
        if _is_data_get(method, path):
            seen.append(path)  # list.append: atomic under the GIL
        return len(seen) >= len(CELLS)

    return until


def _head_match(faulty: Faulty) -> str:
    """A path substring only the data file's byte GETs have (``add_rule`` with method GET)."""
    return DATA + ("?alt=media" if faulty.store.scheme == "gs" else "")


def _data_ranges(faulty: Faulty) -> list[tuple[int, int]]:
    """The byte ranges [a, b) the data file's GETs asked for, in the order they arrived."""
    out = []
    for method, path, header in faulty.proxy.ranges:
        if _is_data_get(method, path):
            a, b = header.removeprefix("bytes=").split("-")
            out.append((int(a), int(b) + 1))
    return out


def _same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert_bit_exact(got[name], value, name)


def test_the_head_is_asked_for_before_the_index_answers_and_each_byte_once(faulty, single_file, small_head):
    root, tensors, size = single_file
    url = faulty.store.upload_fixture(root)
    faulty.proxy.clear()
    faulty.proxy.hold("m.index", until=_is_data_get)
    _same(dr.restore_tensors(f"{url}/m", storage_options=faulty.options), tensors)
    assert [ok for _, ok in faulty.proxy.held] == [True], faulty.proxy.held
    ranges = sorted(_data_ranges(faulty))
    assert ranges[: len(CELLS)] == CELLS, ranges
    # the plan's reads took the head's bytes from it: what they asked starts where it ends
    ends = [min(b, size) for _, b in ranges]
    assert [a for a, _ in ranges[1:]] == ends[:-1] and ends[-1] == size, ranges


def test_no_head_where_it_would_not_be_read(faulty, single_file, small_head):
    """Asked for only when every tensor is restored by threads here, with no byte budget."""
    root, tensors, _ = single_file
    url = faulty.store.upload_fixture(root)
    some = sorted(tensors)[5:7]
    for kw in ({"names": some}, {"max_inflight_bytes": 1 << 20}):
        faulty.proxy.clear()
        got = dr.restore_tensors(f"{url}/m", storage_options=faulty.options, **kw)
        _same(got, {n: tensors[n] for n in (kw.get("names") or tensors)})
        assert not set(CELLS) & set(_data_ranges(faulty)), kw


@pytest.mark.parametrize("kind", ["503", "reset", "truncate", "stall"])
def test_a_failed_head_is_asked_again(faulty, single_file, small_head, kind):
    root, tensors, size = single_file
    url = faulty.store.upload_fixture(root)
    faulty.proxy.clear()
    faulty.proxy.add_rule(kind, match=_head_match(faulty), times=1, method="GET")  # the first: the head
    # the index answers once every cell of the head is on the wire: a cell still unsent when the
    # restore ends (its reads asked for those bytes themselves) is dropped unsent, as it should be
    faulty.proxy.hold("m.index", until=_every_cell_sent())
    _same(dr.restore_tensors(f"{url}/m", storage_options=faulty.options, timeout=1.0), tensors)
    assert [ok for _, ok in faulty.proxy.held] == [True], faulty.proxy.held  # not its timeout
    ranges = sorted(_data_ranges(faulty))
    assert set(CELLS) <= set(ranges) and faulty.proxy.faults(kind) == 1, ranges
    # the head's GETs and the restore's own reads cover every byte of the file
    assert ranges[0][0] == 0 and all(b >= a for (_, b), (a, _) in zip(ranges, ranges[1:]))
    assert max(b for _, b in ranges) >= size


def test_a_sharded_checkpoint_is_restored_as_before(faulty, tmp_path):
    """The guessed single data file does not exist: its GET fails and nothing else changes."""
    rng = np.random.default_rng(6)
    tensors = {f"v{i}": rng.standard_normal((32, 32)).astype(np.float32) for i in range(8)}
    dr.save_tensors(str(tmp_path / "m"), tensors, num_shards=3)
    url = faulty.store.upload_fixture(tmp_path)
    faulty.proxy.clear()
    _same(dr.restore_tensors(f"{url}/m", storage_options=faulty.options), tensors)
    assert [r for r in faulty.proxy.ranges if _is_data_get(*r[:2])] != []  # the guess was asked for


# -- EarlyRead on its own: chunks as an HTTP client hands them out ------------------------------------


def _early(data: bytes, chunk: int, nbytes: int, fail=None, cell: int | None = None) -> EarlyRead:
    """``fail``: an exception for every GET, or ``{start: exception}``."""

    def begin(start, end, sink: Chunks):
        fut = concurrent.futures.Future()
        body = data[start:end]
        for i in range(0, len(body), chunk):
            sink.write(body[i : i + chunk])
        error = fail.get(start) if isinstance(fail, dict) else fail
        fut.set_exception(error) if error else fut.set_result(None)
        return fut

    return EarlyRead("gs://b/m.data-00000-of-00001", begin, nbytes, cell)


def _serve(e: EarlyRead, start: int, end: int):
    buf = bytearray(end - start)
    sink = Sink([buf])
    return e.serve(start, end, sink, 1.0), bytes(buf[: sink.received]), sink


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10_000])
def test_serve_takes_what_the_head_holds_from_the_start_on(chunk):
    data = bytes(np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8))
    e = _early(data, chunk, 6_000)
    for start, end, stop in ((0, 100, 100), (100, 5_000, 5_000), (5_000, 8_000, 6_000), (6_000, 7_000, 6_000)):
        pos, got, _ = _serve(e, start, end)
        assert pos == stop and got == data[start:stop], (start, end)


def test_serve_takes_what_arrived_before_a_failure_and_nothing_after_a_discard_or_once_taken():
    data = bytes(range(256)) * 10
    cut = _early(data[:700], 100, 2_000, fail=ConnectionResetError())  # cut off after 700 bytes
    assert _serve(cut, 0, 500)[:2] == (500, data[:500])
    assert _serve(cut, 500, 1_000)[:2] == (700, data[500:700])
    e = _early(data, 100, 2_000)
    e.discard()
    assert _serve(e, 0, 500)[0] == 0
    e = _early(data, 100, 2_000)
    assert _serve(e, 0, 2_000)[0] == 2_000
    assert _serve(e, 0, 10)[0] == 0  # every byte was taken once: the answer was dropped


def test_serve_takes_bytes_as_they_arrive_and_stops_when_its_time_is_up():
    data = bytes(range(256)) * 40
    sinks = []

    def begin(start, end, sink):
        sinks.append(sink)
        return concurrent.futures.Future()  # still running: the bytes come from another thread

    e = EarlyRead("gs://b/m.data-00000-of-00001", begin, 8_000)
    feeder = threading.Thread(
        target=lambda: [(time.sleep(0.01), sinks[0].write(data[i : i + 1_000])) for i in range(0, 8_000, 1_000)]
    )
    feeder.start()
    buf = bytearray(6_000)
    assert e.serve(0, 6_000, Sink([buf]), 10.0) == 6_000 and bytes(buf) == data[:6_000]
    feeder.join()
    idle = EarlyRead("gs://b/m.data-00000-of-00001", lambda *_: concurrent.futures.Future(), 8_000)
    t0 = time.monotonic()
    assert idle.serve(0, 100, Sink([bytearray(100)]), 0.2) == 0  # nothing came in time
    assert time.monotonic() - t0 < 5


def test_several_gets_serve_one_read_and_a_failed_later_one_is_not_used():
    data = bytes(np.random.default_rng(2).integers(0, 256, 10_000, dtype=np.uint8))
    e = _early(data, 300, 6_000, cell=1_000)
    assert _serve(e, 500, 5_500)[:2] == (5_500, data[500:5_500])
    assert _serve(e, 5_500, 9_000)[:2] == (6_000, data[5_500:6_000])
    # the GET of [2000, 3000) wrote its bytes, then failed: they are not trusted
    e = _early(data, 300, 6_000, cell=1_000, fail={2_000: ConnectionResetError()})
    assert _serve(e, 500, 5_500)[:2] == (2_000, data[500:2_000])
    assert _serve(e, 3_000, 4_000)[:2] == (4_000, data[3_000:4_000])


def test_a_short_answer_is_the_start_of_the_file_and_no_more():
    data = bytes(range(200))
    e = _early(data, 64, 1_000)  # the file ends at 200: the answer holds 200 bytes
    assert _serve(e, 150, 400)[:2] == (200, data[150:200])
    assert _serve(e, 200, 400)[0] == 200


def test_an_answer_longer_than_asked_is_refused():
    with pytest.raises(ValueError, match="more than the 10 bytes"):
        Chunks(0, 10).write(b"x" * 11)
