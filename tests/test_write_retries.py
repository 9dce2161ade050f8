"""Writes under faults: a merge's copies and a save's uploads go through the storage layer's one
retry loop (``Storage.copy``, ``Storage.upload``).

* in process, on every backend: a copy or an upload is retried as a whole after a transient
  failure, not after a permanent one; a retried upload streams every piece again from the
  first; an error of what produces the bytes is not retried; a failed attempt leaves nothing
  partial at the destination;
* on the wire (S3 through moto, GCS through fake-gcs-server, behind ``tests/fault_proxy.py``): a
  merge's server-side copies and a save's uploads that fail transiently are retried to a
  bit-exact result, a permanent failure (403) fails the write after one request and loses
  nothing; an interrupted multipart upload is aborted and started again.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from fault_proxy import FaultProxy

import distrestore as dr
from distrestore.errors import CheckpointNotFoundError, StorageError
from distrestore.storage import RetryPolicy, Storage
from distrestore.storage.wrappers import StorageWrapper

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.005)
DATA = np.random.default_rng(5).integers(0, 256, 300_001, dtype=np.uint8).tobytes()


class FailingWrites(StorageWrapper):
    """Fails the first ``n`` copy and upload attempts with ``error``; an upload attempt fails
    after it has streamed ``after`` pieces (so a retry must stream them again)."""

    def __init__(self, inner, n, error, after=0):
        super().__init__(inner)
        self.n, self.error, self.after = n, error, after
        self.copies = self.uploads = 0

    def copy_attempt(self, src, dst, limit):
        self.copies += 1
        if self.copies <= self.n:
            raise self.error
        return super().copy_attempt(src, dst, limit)

    def upload_attempt(self, url, chunks, limit):
        self.uploads += 1
        if self.uploads > self.n:
            return super().upload_attempt(url, chunks, limit)

        def failing():
            for i, piece in enumerate(chunks()):
                if i == self.after:
                    raise self.error
                yield piece

        return super().upload_attempt(url, failing, limit)


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def place(request, tmp_path):
    """``(base URL, storage options)`` of an empty place on each backend."""
    if request.param == "local":
        return str(tmp_path), {}
    store = request.getfixturevalue({"memory": "memory_store", "s3": "s3_server", "gcs": "gcs_server"}[request.param])
    return store.url(f"writes-{tmp_path.name}"), store.storage_options


def _pieces(data: bytes, size: int = 65_536):
    return lambda: (data[i : i + size] for i in range(0, len(data), size))


def test_upload_is_retried_as_a_whole_and_streams_every_piece_again(place):
    base, options = place
    s = FailingWrites(Storage.for_url(base, options, retry=FAST), 2, ConnectionResetError("reset"), after=2)
    url = f"{base}/up.bin"
    s.upload(url, _pieces(DATA))
    assert s.uploads == 3
    assert s.read(url) == DATA


def test_copy_is_retried_and_a_permanent_failure_is_not(place):
    base, options = place
    plain = Storage.for_url(base, options, retry=FAST)
    plain.upload(f"{base}/src.bin", _pieces(DATA))
    s = FailingWrites(Storage.for_url(base, options, retry=FAST), 2, TimeoutError("stalled"))
    s.copy(f"{base}/src.bin", f"{base}/dst.bin")
    assert s.copies == 3 and plain.read(f"{base}/dst.bin") == DATA
    denied = FailingWrites(Storage.for_url(base, options, retry=FAST), 10, PermissionError("denied"))
    with pytest.raises(StorageError, match=r"copying .*src\.bin \(to .*other\.bin\) failed after 1 attempt"):
        denied.copy(f"{base}/src.bin", f"{base}/other.bin")
    assert denied.copies == 1
    full = FailingWrites(Storage.for_url(base, options, retry=FAST), 10, OSError(errno.ENOSPC, "No space left"), 1)
    with pytest.raises(StorageError, match="after 1 attempt"):
        full.upload(f"{base}/full.bin", _pieces(DATA))
    assert full.uploads == 1 and not plain.exists(f"{base}/full.bin")  # nothing partial published
    with pytest.raises(CheckpointNotFoundError, match="missing.bin"):
        plain.copy(f"{base}/missing.bin", f"{base}/x.bin")


def test_an_error_producing_the_bytes_is_not_retried(place):
    base, options = place
    s = FailingWrites(Storage.for_url(base, options, retry=FAST), 0, None)

    def broken():
        yield DATA[:1000]
        raise ValueError("cannot encode tensor 'w'")

    with pytest.raises(ValueError, match="cannot encode tensor 'w'"):
        s.upload(f"{base}/broken.bin", broken)
    assert s.uploads == 1
    assert not s.exists(f"{base}/broken.bin")


# -- on the wire -----------------------------------------------------------------------------------


class Proxied:
    """An object store behind a fault proxy: ``options`` go through the proxy, ``direct`` do not."""

    def __init__(self, store, flavor):
        self.store = store
        self.name = flavor
        self.proxy = FaultProxy(store.endpoint, flavor, seed=3).start()
        self.direct = store.storage_options
        self.options = {**store.storage_options, "endpoint_url": self.proxy.url}


@pytest.fixture(params=["s3", "gcs"])
def proxied(request):
    p = Proxied(request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server"}[request.param]), request.param)
    try:
        yield p
    finally:
        p.proxy.stop()


def _sources(proxied, base: str) -> tuple[list[str], dict]:
    rng = np.random.default_rng(9)
    a = {"a/w": rng.standard_normal((64, 32)).astype(np.float32), "a/b": np.arange(7, dtype=np.int64)}
    b = {"b/w": rng.standard_normal(100).astype(np.float64), "words": np.array([b"x", b"\xff\x00"], dtype=object)}
    dr.save_tensors(f"{base}/a/model", a, num_shards=2, storage_options=proxied.direct)
    dr.save_tensors(f"{base}/b/model", b, storage_options=proxied.direct)
    return [f"{base}/a/model", f"{base}/b/model"], {**a, **b}


def _same(values: dict, expected: dict) -> None:
    assert sorted(values) == sorted(expected)
    for k, v in expected.items():
        v = np.asarray(v)
        assert values[k].dtype == v.dtype and values[k].shape == v.shape, k
        assert (values[k].tolist() == v.tolist()) if v.dtype == object else values[k].tobytes() == v.tobytes(), k


@pytest.mark.parametrize("kind", ["503", "500", "429", "reset"])
def test_merge_copies_are_retried_through_transient_faults(proxied, tmp_path, kind):
    base = proxied.store.url(f"merge-{kind}-{tmp_path.name}")
    sources, expected = _sources(proxied, base)
    target = "merged.data-00001-of-00003"  # a server-side copy (S3 PUT with a copy source, GCS rewriteTo)
    proxied.proxy.add_rule(kind, match=target, times=2)
    dr.merge_checkpoints(sources, f"{base}/m/merged", storage_options=proxied.options)
    assert proxied.proxy.faults(kind) == 2
    assert proxied.proxy.requests(target) == 3  # two faults, then the copy: nothing retried inside s3fs/gcsfs
    _same(dr.restore_tensors(f"{base}/m/merged", storage_options=proxied.direct), expected)


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_save_and_cross_store_copy_uploads_are_retried(proxied, tmp_path, kind):
    base = proxied.store.url(f"save-{kind}-{tmp_path.name}")
    rng = np.random.default_rng(2)
    tensors = {f"t{i}": rng.standard_normal(1000).astype(np.float32) for i in range(6)}
    proxied.proxy.add_rule(kind, match="saved.data-00001-of-00002", times=2)
    dr.save_tensors(f"{base}/saved", tensors, num_shards=2, storage_options=proxied.options)
    assert proxied.proxy.faults(kind) == 2
    _same(dr.restore_tensors(f"{base}/saved", storage_options=proxied.direct), tensors)
    # a merge from local files into the bucket streams each data file up (an upload, retried)
    local = dr.save_tensors(str(tmp_path / "local" / "model"), tensors, num_shards=2)
    proxied.proxy.clear()
    proxied.proxy.add_rule(kind, match="up.data-00000-of-00002", times=2)
    dr.merge_checkpoints([local], f"{base}/up", storage_options=proxied.options)
    assert proxied.proxy.faults(kind) == 2
    _same(dr.restore_tensors(f"{base}/up", storage_options=proxied.direct), tensors)


def test_a_denied_copy_fails_at_once_and_loses_nothing(proxied, tmp_path):
    base = proxied.store.url(f"denied-{tmp_path.name}")
    sources, expected = _sources(proxied, base)
    target = "merged.data-00002-of-00003"
    proxied.proxy.add_rule("403", match=target)
    with pytest.raises(StorageError, match=r"merged\.data-00002-of-00003.*after 1 attempt"):
        dr.merge_checkpoints(sources, f"{base}/m/merged", storage_options=proxied.options, delete_sources=True)
    assert sum(1 for m, p, _ in proxied.proxy.log if target in p and m != "DELETE") == 1  # then its clean-up
    with pytest.raises(CheckpointNotFoundError):
        dr.open_checkpoint(f"{base}/m/merged", storage_options=proxied.direct)
    proxied.store.fs.invalidate_cache()
    assert not proxied.store.fs.find(f"{base}/m")  # the copies made before the failure are removed
    values = {}
    for s in sources:
        values.update(dr.restore_tensors(s, storage_options=proxied.direct))
    _same(values, expected)


def test_an_interrupted_multipart_upload_is_aborted_and_started_again(s3_server, tmp_path):
    proxy = FaultProxy(s3_server.endpoint, "s3").start()
    try:
        # 5 MiB parts (S3's smallest): four tensors of 3 MiB are a multipart upload of two parts
        options = {**s3_server.storage_options, "endpoint_url": proxy.url, "default_block_size": 5 << 20}
        rng = np.random.default_rng(4)
        big = {f"t{i}": rng.integers(0, 2**31, 3 << 18, dtype=np.int32) for i in range(4)}
        proxy.add_rule("503", match="partNumber=2", times=1)
        url = s3_server.url(f"mpu-{tmp_path.name}", "model")
        dr.save_tensors(url, big, storage_options=options)
        log = [(m, p) for m, p, _ in proxy.log if "model.data-" in p]
        assert sum(1 for m, p in log if m == "POST" and p.endswith("?uploads")) == 2, log  # started twice
        assert any(m == "DELETE" and "uploadId=" in p for m, p in log)  # the first one aborted
        _same(dr.restore_tensors(url, storage_options=s3_server.storage_options), big)
        s3_server.fs.invalidate_cache()
        assert not s3_server.fs.list_multipart_uploads(s3_server.bucket)  # no parts left behind
    finally:
        proxy.stop()
