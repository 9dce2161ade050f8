"""One suite of client behaviours, run against the in-process restore and the Ray restore service.

Every test takes ``restorer``: ``in_process`` (``distrestore.fetch``, ``store.initialize()``,
``Checkpoint.restore`` reading storage themselves) or ``service`` (a ``ServiceClient`` of a
coordinator on a single-node Ray session, whose ``fetch``/``initialize``/``restore`` have the
same signatures). Values are compared with the TF-written fixtures' digests, errors by kind.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from checks import assert_bit_exact, load_expected  # noqa: E402
from fixtures.digest import value_digest  # noqa: E402

import distrestore as dr  # noqa: E402
from distrestore.errors import (  # noqa: E402
    AssignmentMapError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    DistRestoreError,
    ShapeMismatchError,
    TensorNotFoundError,
)

pytestmark = pytest.mark.usefixtures("ray_local")

FIXTURES = ["tf1_sharded", "all_dtypes", "many_small", "merged", "tf2_keras", "saved_model"]


class InProcess:
    """The restore without a service: each call reads storage itself."""

    name = "in_process"

    def checkpoint(self, path):
        return dr.open_checkpoint(path)

    def fetch(self, requests, **kw):
        return dr.fetch(requests, **kw)

    def restore_tensors(self, path, names=None):
        return dr.restore_tensors(path, names)

    def initialize(self, store):
        store.initialize()

    def restore(self, root, path):
        return root.restore(path)

    def reads(self) -> int | None:
        return None


class Service:
    """The same calls through a restore service's client."""

    name = "service"

    def __init__(self, client):
        self.client = client

    def checkpoint(self, path):
        return self.client.checkpoint(path)

    def fetch(self, requests, **kw):
        return self.client.fetch(requests, **kw)

    def restore_tensors(self, path, names=None):
        return self.client.restore_tensors(path, names)

    def initialize(self, store):
        self.client.initialize(store)

    def restore(self, root, path):
        return self.client.restore(root, path)

    def reads(self) -> int:
        return self.client.stats()["reads"]


@pytest.fixture(scope="module")
def service():
    client = dr.serve(name="distrestore-clients-suite", cache_bytes=64 << 20, chunk_bytes=1 << 20)
    yield client
    client.shutdown()


@pytest.fixture(params=["in_process", "service"])
def restorer(request):
    if request.param == "in_process":
        return InProcess()
    return Service(request.getfixturevalue("service"))


@pytest.mark.parametrize("name", FIXTURES)
def test_every_tensor_bit_exact(fixtures_dir, restorer, name):
    prefix, exp = load_expected(fixtures_dir, name)
    index = restorer.checkpoint(prefix)
    want = {k: t for k, t in exp["tensors"].items() if t["sha256"] is not None}
    got = restorer.fetch([dr.TensorRequest(index, k) for k in want])
    for (k, t), a in zip(want.items(), got):
        assert value_digest(a) == t["sha256"], k
        assert list(np.shape(a)) == t["shape"], k


@pytest.mark.parametrize("name", ["tf1_sharded", "all_dtypes"])
def test_restore_tensors_by_name(fixtures_dir, restorer, name):
    """``{name: array}`` of every tensor by default, or of the names given (a partitioned
    variable's full name among them), without a TensorRequest per tensor."""
    prefix, exp = load_expected(fixtures_dir, name)
    want = {k: t for k, t in exp["tensors"].items() if t["sha256"] is not None}
    every = restorer.restore_tensors(prefix)
    assert sorted(every) == sorted(want)
    for k, a in every.items():
        assert value_digest(a) == want[k]["sha256"], k
        assert list(np.shape(a)) == want[k]["shape"], k
    some = sorted(want)[::3]
    got = restorer.restore_tensors(prefix, some)
    assert list(got) == some
    for k in some:
        assert_bit_exact(got[k], every[k], k)
    if name == "tf1_sharded":
        full = restorer.restore_tensors(prefix, ["big/part5"])["big/part5"]
        assert value_digest(full) == exp["partition_full_sha256"]["big/part5"]


def test_regions_across_stored_partitions(fixtures_dir, restorer):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    index = restorer.checkpoint(prefix)
    full = dr.restore_tensors(prefix, ["big/part5", "part_cols"])
    assert value_digest(full["big/part5"]) == exp["partition_full_sha256"]["big/part5"]
    regions = [
        ("big/part5", (slice(10, 50), slice(2, 6))),  # spans three stored slices
        ("big/part5", (slice(37, 38), slice(0, 8))),
        ("part_cols", (slice(1, 3), slice(2, 6))),  # a column block across both parts
        ("big/part5", None),
    ]
    got = restorer.fetch([dr.TensorRequest(index, n, r) for n, r in regions])
    for (n, r), a in zip(regions, got):
        assert_bit_exact(a, full[n] if r is None else full[n][r], (n, r))


def test_identical_requests_get_copies(fixtures_dir, restorer):
    prefix, _ = load_expected(fixtures_dir, "tf1_sharded")
    index = restorer.checkpoint(prefix)
    a, b = restorer.fetch([dr.TensorRequest(index, "scope1/w")] * 2)
    assert_bit_exact(a, b)
    assert not np.shares_memory(a, b)


def test_variable_store_repartitioned(fixtures_dir, restorer):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    store = dr.VariableStore()
    p = store.get_variable("new/big", shape=[100, 8], partitions=[4, 1])  # stored in 5 parts
    cols = store.get_variable("new/cols", shape=[4, 7], partitions=[1, 3])  # stored in 2 column parts
    w = store.get_variable("s/w", shape=exp["tensors"]["scope1/w"]["shape"])
    index = restorer.checkpoint(prefix)
    dr.init_from_checkpoint(index, {"big/part5": p, "part_cols": cols, "scope1/": "s/"}, store=store)
    restorer.initialize(store)
    assert value_digest(p.numpy()) == exp["partition_full_sha256"]["big/part5"]
    assert value_digest(cols.numpy()) == exp["partition_full_sha256"]["part_cols"]
    assert value_digest(w.numpy()) == exp["tensors"]["scope1/w"]["sha256"]


def test_checkpoint_tree_with_a_deferred_attach(fixtures_dir, restorer):
    prefix, exp = load_expected(fixtures_dir, "tf2_keras")
    t = exp["tensors"]
    shapes = [[], [], [4, 8], [4, 8], [8], [8], [8, 3], [8, 3], [3], [3]]
    variables = [dr.Variable(shape=s, dtype="int64" if i == 0 else "float32") for i, s in enumerate(shapes)]
    root = dr.Checkpoint(optimizer=dr.Node(_variables=variables))
    status = restorer.restore(root, prefix)
    status.assert_existing_objects_matched()
    for i in range(2, 10):
        assert value_digest(variables[i].numpy()) == t[f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"]["sha256"]
    later = [dr.Variable(shape=s) for s in ([4, 8], [8], [8, 3], [3])]
    root.optimizer._trainable_variables = later  # attaching restores it now, through the same path
    for i, v in enumerate(later):
        key = f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        assert value_digest(v.numpy()) == t[key]["sha256"], key
    assert int(root.save_counter.numpy()) == 1
    status.expect_partial()


def test_bad_names_and_shapes_fail_before_any_read(fixtures_dir, restorer):
    prefix, _ = load_expected(fixtures_dir, "tf1_sharded")
    index = restorer.checkpoint(prefix)
    before = restorer.reads()
    with pytest.raises(TensorNotFoundError):
        restorer.fetch([dr.TensorRequest(index, "no/such/tensor")])
    with pytest.raises(TensorNotFoundError):
        restorer.restore_tensors(prefix, ["scope1/w", "no/such/tensor"])
    store = dr.VariableStore()
    v = store.get_variable("v", shape=[3, 3])
    with pytest.raises(AssignmentMapError):
        dr.init_from_checkpoint(index, {"nope": v}, store=store)
    with pytest.raises(ShapeMismatchError):
        dr.init_from_checkpoint(index, {"scope1/w": v}, store=store)
    assert restorer.reads() == before


def copy_checkpoint(prefix: str, dest) -> str:
    src_dir, base = os.path.split(prefix)
    for f in os.listdir(src_dir):
        if f.startswith(base + "."):
            shutil.copy(os.path.join(src_dir, f), dest / f)
    return str(dest / base)


def test_corrupt_entry_fails_and_assigns_nothing(fixtures_dir, restorer, tmp_path):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    bad = copy_checkpoint(prefix, tmp_path)
    index = dr.open_checkpoint(bad)
    e = index.entry("scope1/w")
    with open(index.data_file(e.shard_id), "r+b") as f:
        f.seek(e.offset + 3)
        b = f.read(1)
        f.seek(e.offset + 3)
        f.write(bytes([b[0] ^ 0x10]))
    store = dr.VariableStore()
    t = exp["tensors"]
    w = store.get_variable("w", shape=t["scope1/w"]["shape"], dtype=t["scope1/w"]["dtype"], initializer=7.0)
    b = store.get_variable("b", shape=t["scope1/b"]["shape"], dtype=t["scope1/b"]["dtype"], initializer=7.0)
    dr.init_from_checkpoint(restorer.checkpoint(bad), {"scope1/w": w, "scope1/b": b}, store=store)
    with pytest.raises(ChecksumMismatchError) as info:
        restorer.initialize(store)
    assert "'scope1/w'" in str(info.value) and isinstance(info.value, ValueError)
    assert (w.numpy() == 7).all() and (b.numpy() == 7).all()  # nothing assigned
    assert store.pending_restores()  # still pending


def test_missing_data_file(fixtures_dir, restorer, tmp_path):
    prefix, _ = load_expected(fixtures_dir, "tf1_sharded")
    bad = copy_checkpoint(prefix, tmp_path)
    index = dr.open_checkpoint(bad)
    os.remove(index.data_file(index.entry("scope1/w").shard_id))
    with pytest.raises(CheckpointNotFoundError) as info:
        restorer.fetch([dr.TensorRequest(restorer.checkpoint(bad), "scope1/w")])
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DistRestoreError)
    assert not isinstance(info.value, ray.exceptions.RayError)


def test_missing_checkpoint(restorer, tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        restorer.checkpoint(str(tmp_path / "nothing-here"))
