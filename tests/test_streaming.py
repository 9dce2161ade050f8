"""Ranges of s3:// and gs:// objects are streamed into their destination buffers.

``Sink`` places an answer's chunks, however they are cut, in consecutive buffers and gives each
buffer's CRC32C (native kernel and Python fallback alike). Against the real S3 API (moto) and
the real GCS JSON API (fake-gcs-server), each in a process of its own, a range read through
``Storage`` never holds the whole answer in memory (``cat_file`` would: aiohttp joins the body
into one ``bytes``), lands every byte in place and returns the right checksums. A zonal GCS
bucket, which gcsfs reads over gRPC, is still read by gcsfs itself.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from distrestore.format import crc
from distrestore.storage import Storage
from distrestore.storage.streaming import Sink


def _cut(rng, n: int, pieces: int) -> list[int]:
    """``pieces`` random lengths (zeros included) that add up to ``n``."""
    cuts = np.sort(rng.integers(0, n + 1, size=pieces - 1))
    return np.diff(np.concatenate([[0], cuts, [n]])).tolist()


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_sink_places_chunks_and_checksums_each_buffer(native, monkeypatch):
    if not native:
        monkeypatch.setattr(crc, "native", None)
    elif crc.native is None:
        pytest.skip("the native checksum module is not built here")
    rng = np.random.default_rng(11)
    for _ in range(200):
        total = int(rng.integers(1, 20_000))
        src = rng.integers(0, 256, size=total, dtype=np.uint8).tobytes()
        bufs = [bytearray(n) for n in _cut(rng, total, int(rng.integers(1, 40)))]
        sink = Sink([memoryview(b) for b in bufs])
        pos = 0
        for n in _cut(rng, total, int(rng.integers(1, 12))):
            if n:  # a stream never hands out an empty chunk before its end
                sink.write(src[pos : pos + n])
                pos += n
        assert sink.received == sink.expected == total
        assert b"".join(bufs) == src
        assert sink.crcs == [crc.value(b) for b in bufs]


def test_sink_refuses_more_than_was_asked():
    sink = Sink([bytearray(3), bytearray(2)])
    sink.write(b"abcd")
    with pytest.raises(ValueError, match="more than the 5 bytes"):
        sink.write(b"ef")


def _data(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8).tobytes()


@pytest.fixture(params=["s3", "gcs"])
def store_out_of_process(request):
    """``(url, storage_options, data)``: an 8 MiB object in a store whose server runs in a
    process of its own, so that this process's traced memory is the client's alone: moto in a
    subprocess (the suite's ``s3_server`` runs in this process and copies the object per
    request), fake-gcs-server."""
    data = _data(8 << 20)
    if request.param == "gcs":
        store = request.getfixturevalue("gcs_server")
        url = store.url("streaming", "blob")
        store.put(url, data)
        yield url, store.storage_options, data
        return
    s3fs = pytest.importorskip("s3fs")
    from conftest import moto_process

    with moto_process() as endpoint:
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir("streaming")
        fs.pipe_file("streaming/blob", data)
        yield "s3://streaming/blob", options, data


def test_a_range_lands_in_place_without_a_whole_copy_of_the_answer(store_out_of_process):
    url, options, data = store_out_of_process
    storage = Storage.for_url(url, options)
    assert hasattr(storage.fs, "distrestore_read_into"), "this gcsfs/s3fs lacks what the streaming reader uses"
    start, length = 1 << 20, 6 << 20
    rng = np.random.default_rng(5)
    dest = np.empty(length, dtype=np.uint8)  # allocated before the trace starts
    views, pos = [], 0
    for n in _cut(rng, length, 300):
        views.append(memoryview(dest)[pos : pos + n])
        pos += n
    storage.size(url)  # the client and its connection exist before the trace starts
    tracemalloc.start()
    try:
        crcs = storage.readinto(url, start, views)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dest.tobytes() == data[start : start + length]
    assert crcs == [crc.value(v) for v in views]
    # cat_file would have held the whole 6 MiB answer as one bytes object
    assert peak < length // 3, f"the read held {peak:,} bytes at its peak for a {length:,}-byte range"


def test_a_zonal_gcs_bucket_is_read_by_gcsfs(gcs_server, monkeypatch):
    data = _data(1 << 20)
    url = gcs_server.url("streaming", "zonal")
    gcs_server.put(url, data)
    storage = Storage.for_url(url, gcs_server.storage_options)
    fs = storage.fs
    seen = []

    async def zonal(bucket):  # what gcsfs's ExtendedGcsFileSystem asks of the storage-layout API
        seen.append(bucket)
        return True

    cat = fs._cat_file
    read = []

    async def cat_file(path, start=None, end=None, **kw):
        read.append((start, end))
        return await cat(path, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "_is_zonal_bucket", zonal, raising=False)
    monkeypatch.setattr(fs, "_cat_file", cat_file)
    dest = bytearray(1000)
    assert storage.readinto(url, 4096, [memoryview(dest)]) == [crc.value(data[4096:5096])]
    assert bytes(dest) == data[4096:5096]
    assert seen == [gcs_server.bucket] and read == [(4096, 5096)]
