"""The user-facing reads through object stores: memory://, S3 (moto server), GCS (fake-gcs-server).

The committed TF fixtures are uploaded (once per session and backend, by the ``remote``
fixture) and read back bit-exactly with ``restore_tensors`` and the reader API; directory
resolution goes through the ``checkpoint`` state file; missing and damaged files raise the
package's errors. Counting and latency-adding storages prove that small tensors are coalesced
into few requests and that requests run concurrently.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from digest import value_digest

import distrestore as dr
from distrestore.errors import CheckpointNotFoundError, ChecksumMismatchError, DistRestoreError, StorageError
from distrestore.index import NoCheckpointInDirectoryError, get_checkpoint_state, latest_checkpoint, open_checkpoint
from distrestore.restore import TensorRequest, fetch, restore_tensors
from distrestore.storage import RetryPolicy, Storage
from distrestore.storage.wrappers import CountingStorage, LatencyStorage, StorageWrapper

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures" / "tf"
FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.005, deadline=10.0)

# every fixture restore_tensors reads (v1_format is refused by design; see test_v1_format_refused)
RESTORABLE = (
    "all_dtypes",
    "manager",
    "many_small",
    "merged",
    "saved_model",
    "tf1_adam",
    "tf1_sharded",
    "tf2_keras",
    "variant",
)
WITH_STATE_FILE = ("manager", "tf1_adam", "tf1_sharded", "tf2_keras", "variant")


def expected(name: str) -> dict:
    return json.loads((FIXTURES_DIR / name / "expected.json").read_text())


def check_values(values: dict, tensors: dict, where: str) -> None:
    """``values`` ({name: array}) match ``expected.json``'s tensors (those TF could read)."""
    want = {n: t for n, t in tensors.items() if t["sha256"] is not None}
    assert set(values) == set(want), where
    for name, t in want.items():
        v = values[name]
        assert list(np.shape(v)) == t["shape"], f"{where}: {name}"
        assert value_digest(v) == t["sha256"], f"{where}: {name} differs from TF's value"


def partition_value(shape, dtype) -> np.ndarray:
    """tf1_sharded's ``partition_value_formula``."""
    n = int(np.prod(shape))
    if np.issubdtype(np.dtype(dtype), np.integer):
        return (np.arange(n, dtype=np.int64) * 1000003 - 5).reshape(shape).astype(dtype)
    return (np.arange(n, dtype=np.float64) * 0.5 - 7.25).reshape(shape).astype(dtype)


# -- values, bit-exact --------------------------------------------------------------------------


@pytest.mark.parametrize("name", RESTORABLE)
def test_restore_tensors_bit_exact(remote, name):
    url, options = remote(name)
    exp = expected(name)
    values = restore_tensors(f"{url}/{exp['prefix']}", storage_options=options)
    check_values(values, exp["tensors"], f"{remote.name}:{name}")
    for other, sub in exp.get("other_checkpoints", {}).items():
        values = restore_tensors(f"{url}/{other}", storage_options=options)
        check_values(values, sub["tensors"], f"{remote.name}:{name}/{other}")


def test_restore_from_directory(remote):
    url, options = remote("tf1_sharded")
    values = restore_tensors(url, storage_options=options)
    check_values(values, expected("tf1_sharded")["tensors"], remote.name)


def test_restore_subset_and_partitions(remote):
    url, options = remote("tf1_sharded")
    exp = expected("tf1_sharded")
    names = ["big/part5", "part_cols", "scope2/nested/label"]
    values = restore_tensors(f"{url}/model.ckpt-7", names, storage_options=options)
    assert list(values) == names
    for n in names:
        assert value_digest(values[n]) == exp["tensors"][n]["sha256"]


# -- directory resolution -----------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_STATE_FILE)
def test_latest_checkpoint_and_open_directory(remote, name):
    url, options = remote(name)
    exp = expected(name)
    prefix = f"{url}/{exp['latest_checkpoint']}"
    assert latest_checkpoint(url, storage_options=options) == prefix
    assert dr.latest_checkpoint(url, storage_options=options) == prefix
    index = open_checkpoint(url, storage_options=options)
    assert index.prefix == prefix
    assert index.shape_map() == {n: t["shape"] for n, t in exp["tensors"].items()}


def test_directory_with_trailing_slash(remote):
    url, options = remote("manager")
    assert open_checkpoint(url + "/", storage_options=options).prefix == f"{url}/ckpt-4"


def test_gcs_scheme_alias(gcs_server):
    # gcsfs answers to gs:// and gcs://; a URL keeps the scheme the user gave
    url = gcs_server.upload_fixture(FIXTURES_DIR / "merged").replace("gs://", "gcs://", 1)
    values = restore_tensors(f"{url}/merged", storage_options=gcs_server.storage_options)
    check_values(values, expected("merged")["tensors"], "gcs://")


def test_manager_state_lists_all_checkpoints(remote):
    url, options = remote("manager")
    state = get_checkpoint_state(url, storage_options=options)
    assert state.model_checkpoint_path == f"{url}/ckpt-4"
    assert state.all_model_checkpoint_paths == [f"{url}/{p}" for p in expected("manager")["manager_checkpoints"]]


def test_state_file_with_absolute_local_paths(remote):
    # TF1's Saver wrote absolute paths into a temporary directory: nothing is found, like TF
    url, options = remote("tf1_sharded")
    assert latest_checkpoint(url, "checkpoint.absolute", storage_options=options) is None


def test_state_file_with_absolute_urls(remote):
    # TF saving straight to a bucket writes absolute URLs into the state file
    url, options = remote.upload("manager")
    remote.store.put(
        f"{url}/checkpoint",
        (
            f'model_checkpoint_path: "{url}/ckpt-3"\n'
            f'all_model_checkpoint_paths: "{url}/ckpt-2"\n'
            f'all_model_checkpoint_paths: "{url}/ckpt-3"\n'
        ).encode(),
    )
    assert latest_checkpoint(url, storage_options=options) == f"{url}/ckpt-3"
    assert get_checkpoint_state(url, storage_options=options).all_model_checkpoint_paths == [
        f"{url}/ckpt-2",
        f"{url}/ckpt-3",
    ]
    check_values(
        restore_tensors(url, storage_options=options),
        expected("manager")["other_checkpoints"]["ckpt-3"]["tensors"],
        remote.name,
    )


def test_saved_model_directory(remote):
    url, options = remote("saved_model")
    assert latest_checkpoint(url, storage_options=options) is None
    assert open_checkpoint(url, storage_options=options).prefix == f"{url}/variables/variables"
    check_values(restore_tensors(url, storage_options=options), expected("saved_model")["tensors"], remote.name)


def test_v1_format_refused(remote):
    url, options = remote("v1_format")
    with pytest.raises(dr.UnsupportedCheckpointError, match="V1"):
        open_checkpoint(f"{url}/model.ckpt", storage_options=options)
    with pytest.raises(dr.UnsupportedCheckpointError, match="V1"):
        open_checkpoint(url, storage_options=options)


# -- errors -------------------------------------------------------------------------------------


def test_missing_index(remote):
    url, options = remote("tf1_sharded")
    prefix = f"{url}/model.ckpt-99"
    for call in (
        lambda: open_checkpoint(prefix, storage_options=options),
        lambda: restore_tensors(prefix, storage_options=options),
        lambda: dr.load_checkpoint(prefix, storage_options=options),
    ):
        with pytest.raises(CheckpointNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DistRestoreError)
        assert prefix in str(info.value)


def test_missing_location(remote):
    url = remote.store.url("no-such-dir", "model.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="no-such-dir"):
        open_checkpoint(url, storage_options=remote.storage_options)


def test_directory_without_state_file(remote):
    url, options = remote.upload("manager", exclude=["checkpoint"])
    assert latest_checkpoint(url, storage_options=options) is None
    with pytest.raises(NoCheckpointInDirectoryError) as info:
        open_checkpoint(url, storage_options=options)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert url in str(info.value)


def test_state_file_naming_a_deleted_checkpoint(remote):
    url, options = remote.upload("manager", exclude=["ckpt-4.index", "ckpt-4.data-00000-of-00001"])
    assert latest_checkpoint(url, storage_options=options) is None
    with pytest.raises(CheckpointNotFoundError):
        open_checkpoint(url, storage_options=options)
    # the older checkpoints are still there
    check_values(
        restore_tensors(f"{url}/ckpt-3", storage_options=options),
        expected("manager")["other_checkpoints"]["ckpt-3"]["tensors"],
        remote.name,
    )


def test_missing_data_shard(remote):
    missing = "model.ckpt-7.data-00002-of-00004"
    url, options = remote.upload("tf1_sharded", exclude=[missing])
    storage = CountingStorage(Storage.for_url(url, options, retry=FAST))
    index = open_checkpoint(f"{url}/model.ckpt-7", storage=storage)  # the index alone is fine
    storage.reset()
    with pytest.raises(CheckpointNotFoundError) as info:
        fetch([TensorRequest(index, n) for n in index.entries])
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert f"{url}/{missing}" in msg and "reading tensors" in msg
    assert storage.attempts == len(storage.requests)  # nothing was retried
    with pytest.raises(CheckpointNotFoundError, match=missing):
        restore_tensors(f"{url}/model.ckpt-7", storage_options=options)


def test_truncated_data_shard(remote, fixtures_dir):
    name = "model.ckpt-7.data-00003-of-00004"
    url, options = remote.upload("tf1_sharded")
    remote.store.put(f"{url}/{name}", (fixtures_dir / "tf1_sharded" / name).read_bytes()[:1000])
    storage = CountingStorage(Storage.for_url(url, options, retry=FAST))
    with pytest.raises(StorageError) as info:
        fetch([TensorRequest(open_checkpoint(f"{url}/model.ckpt-7", storage=storage), "big/part5")])
    assert isinstance(info.value, OSError)
    assert f"{url}/{name}" in str(info.value) and "big/part5" in str(info.value)


def test_flipped_byte_in_data(remote, fixtures_dir):
    name = "merged.data-00000-of-00002"
    url, options = remote.upload("merged")
    data = bytearray((fixtures_dir / "merged" / name).read_bytes())
    data[len(data) // 2] ^= 0x40
    remote.store.put(f"{url}/{name}", bytes(data))
    with pytest.raises(ChecksumMismatchError) as info:
        restore_tensors(f"{url}/merged", storage_options=options)
    assert isinstance(info.value, ValueError)


# -- coalescing and concurrency -----------------------------------------------------------------


def test_many_small_tensors_are_coalesced(remote):
    url, options = remote("many_small")
    exp = expected("many_small")
    storage = CountingStorage(Storage.for_url(url, options, retry=FAST))
    index = open_checkpoint(f"{url}/{exp['prefix']}", storage=storage)
    assert len(storage.requests) <= 3  # the index: a few reads, whatever its size
    storage.reset()
    names = list(index.entries)
    assert len(names) == 2000
    arrays = fetch([TensorRequest(index, n) for n in names])
    check_values(dict(zip(names, arrays)), exp["tensors"], remote.name)
    data_requests = storage.data_requests()
    assert 1 <= len(data_requests) <= 20, data_requests
    data_size = (FIXTURES_DIR / "many_small" / "many.data-00000-of-00001").stat().st_size
    assert storage.bytes_read <= data_size  # each byte at most once
    assert storage.attempts == len(storage.requests)


def test_subsets_of_many_small(remote):
    url, options = remote("many_small")
    storage = CountingStorage(Storage.for_url(url, options, retry=FAST))
    index = open_checkpoint(f"{url}/many", storage=storage)
    tensors = expected("many_small")["tensors"]
    all_names = list(index.entries)
    # 500 neighbours: joined into a few requests; a sparse subset: however the planner groups
    # it, no more requests than tensors. Either way only the bytes needed are read.
    for names, max_requests in ((all_names[100:600], 20), (all_names[::10], len(all_names[::10]))):
        storage.reset()
        arrays = fetch([TensorRequest(index, n) for n in names])
        check_values(dict(zip(names, arrays)), {n: tensors[n] for n in names}, remote.name)
        assert 1 <= len(storage.data_requests()) <= max_requests
        assert storage.bytes_read == 16 * len(names)  # float32 [4] each


# checkpoints read together in the concurrency test: 18 data files, so at least 18 requests
CONCURRENT = [
    ("tf1_sharded", "model.ckpt-7"),
    ("tf2_keras", "ckpt-1"),
    ("tf2_keras", "model_only"),
    ("merged", "merged"),
    ("manager", "ckpt-2"),
    ("manager", "ckpt-3"),
    ("manager", "ckpt-4"),
    ("all_dtypes", "all"),
    ("tf1_adam", "ckpt-1"),
    ("saved_model", "variables/variables"),
]


def test_requests_run_concurrently(remote):
    latency = 0.05
    storage = LatencyStorage(Storage.for_url(remote.store.url(), remote.storage_options, retry=FAST), latency=latency)
    requests, want = [], {}
    for fixture, prefix in CONCURRENT:
        url, _ = remote(fixture)
        index = open_checkpoint(f"{url}/{prefix}", storage=storage)
        exp = expected(fixture)
        tensors = exp["tensors"] if exp["prefix"] == prefix else exp["other_checkpoints"][prefix]["tensors"]
        for name in index.entries:
            requests.append(TensorRequest(index, name))
            want[(fixture, prefix, name)] = tensors[name]
    storage.reset()
    t0 = time.perf_counter()
    arrays = fetch(requests)
    elapsed = time.perf_counter() - t0
    n = len(storage.data_requests())
    assert n >= 16
    serial = n * latency
    # a proof of concurrency, not a performance bound: serial requests would take n * latency
    assert elapsed < 0.5 * serial, f"{n} requests of {latency} s took {elapsed:.3f} s"
    print(
        f"{remote.name}: {n} requests of {latency} s in {elapsed:.3f} s "
        f"(serial {serial:.2f} s, at most {storage.max_inflight} at once)"
    )
    assert storage.max_inflight >= 4
    for a, (key, t) in zip(arrays, want.items()):
        assert value_digest(a) == t["sha256"], key


class Timeline(StorageWrapper):
    """Records when each size query and whole-file read ran, each made ``latency`` s slower."""

    def __init__(self, inner: Storage, latency: float):
        super().__init__(inner)
        self.latency = latency
        self.spans: list[tuple[str, str, float, float]] = []

    def _timed(self, kind: str, url: str, call):
        start = time.monotonic()
        time.sleep(self.latency)
        try:
            return call()
        finally:
            self.spans.append((kind, url, start, time.monotonic()))

    def size_attempt(self, url, limit):
        return self._timed("size", url, lambda: super(Timeline, self).size_attempt(url, limit))

    def read_all_attempt(self, url, limit):
        return self._timed("read", url, lambda: super(Timeline, self).read_all_attempt(url, limit))


def test_single_data_file_size_is_asked_while_the_index_is_read(remote):
    """Planning needs the data file's size (a hostile index may not make a restore allocate):
    for a checkpoint with one data file it is asked beside the index's GET, not after it."""
    url, options = remote("many_small")
    prefix = f"{url}/{expected('many_small')['prefix']}"
    storage = Timeline(Storage.for_url(url, options, retry=FAST), latency=0.2)
    index = open_checkpoint(prefix, storage=storage)
    check_values(restore_tensors(index), expected("many_small")["tensors"], remote.name)
    index_read = [s for s in storage.spans if s[0] == "read" and s[1] == prefix + ".index"]
    sizes = [s for s in storage.spans if s[0] == "size"]
    assert len(index_read) == 1 and [s[1] for s in sizes] == [prefix + ".data-00000-of-00001"]  # asked once
    assert sizes[0][2] < index_read[0][3]  # started before the index had arrived


def test_several_data_files_are_sized_from_the_index(remote):
    """The guess of one data file does not stand in for the sizes of a sharded checkpoint's files."""
    url, options = remote("tf1_sharded")
    prefix = f"{url}/model.ckpt-7"
    storage = Timeline(Storage.for_url(url, options, retry=FAST), latency=0.0)
    index = open_checkpoint(prefix, storage=storage)
    check_values(restore_tensors(index), expected("tf1_sharded")["tensors"], remote.name)
    asked = sorted(s[1] for s in storage.spans if s[0] == "size")
    assert set(asked) == {prefix + ".data-00000-of-00001", *index.data_files()}


# -- the reader API ------------------------------------------------------------------------------


def test_list_variables(remote):
    url, options = remote("tf1_sharded")
    tensors = expected("tf1_sharded")["tensors"]
    want = sorted((n, t["shape"]) for n, t in tensors.items())
    assert dr.list_variables(f"{url}/model.ckpt-7", storage_options=options) == want
    assert dr.list_variables(url, storage_options=options) == want  # a directory


def test_load_checkpoint_get_tensor(remote):
    url, options = remote("tf1_sharded")
    tensors = expected("tf1_sharded")["tensors"]
    reader = dr.load_checkpoint(url, storage_options=options)
    assert reader.get_variable_to_shape_map() == {n: t["shape"] for n, t in tensors.items()}
    assert set(reader.get_variable_to_dtype_map()) == set(tensors)
    for name, t in tensors.items():
        assert reader.has_tensor(name)
        assert value_digest(reader.get_tensor(name)) == t["sha256"], name
    assert not reader.has_tensor("no/such/tensor")
    with pytest.raises(KeyError):
        reader.get_tensor("no/such/tensor")


def test_load_checkpoint_strings_and_dtypes(remote):
    url, options = remote("all_dtypes")
    tensors = expected("all_dtypes")["tensors"]
    reader = dr.load_checkpoint(f"{url}/all", storage_options=options)
    for name, t in tensors.items():
        if name.startswith(("string/", "dtype/", "scalar/")):
            assert value_digest(reader.get_tensor(name)) == t["sha256"], name


def test_load_variable_and_slice(remote):
    url, options = remote("tf1_sharded")
    tensors = expected("tf1_sharded")["tensors"]
    v = dr.load_variable(url, "scope1/w:0", storage_options=options)
    assert value_digest(v) == tensors["scope1/w"]["sha256"]
    reader = dr.load_checkpoint(f"{url}/model.ckpt-7", storage_options=options)
    full = partition_value([100, 8], np.float32)
    np.testing.assert_array_equal(reader.get_slice("big/part5", (slice(10, 45),)), full[10:45])
    np.testing.assert_array_equal(reader.get_tensor("part_cols"), partition_value([4, 7], np.float32))
