"""Differential tests of the reader API (``dr.list_variables``, ``dr.load_checkpoint``,
``dr.load_variable``, ``dr.latest_checkpoint``, ``dr.get_checkpoint_state``) on every committed
TF fixture: against the digests TF recorded in ``expected.json`` (always) and against live TF
where it is importable (values bit-exact, listings, dtype names and error kinds equal).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.digest import value_digest

import distrestore as dr
from distrestore.format import dtypes
from distrestore.format.slices import parse_spec, to_box
from distrestore.format.wire import LENGTH, iter_fields
from distrestore.storage.wrappers import CountingStorage

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
V2_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.json").exists() and p.name != "v1_format")


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def prefix_of(name: str, prefix: str | None = None) -> str:
    return str(FIXTURES / name / (prefix or expected(name)["prefix"]))


def checkpoints():
    """(fixture, prefix relative to it, {name: {dtype, shape, sha256}}) for every V2 bundle."""
    for name in V2_FIXTURES:
        exp = expected(name)
        yield name, exp["prefix"], exp["tensors"]
        for other, info in exp.get("other_checkpoints", {}).items():
            yield name, other, info["tensors"]


CHECKPOINTS = list(checkpoints())
CHECKPOINT_IDS = [f"{n}/{p}" for n, p, _ in CHECKPOINTS]


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def assert_bit_exact(ours, theirs, what=""):
    """Same Python type, dtype, shape and bytes (strings: same elements)."""
    assert type(ours) is type(theirs), what
    if isinstance(theirs, bytes):
        assert ours == theirs, what
        return
    a, b = np.asarray(ours), np.asarray(theirs)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if b.dtype == object:
        assert [bytes(x) for x in a.ravel()] == [bytes(x) for x in b.ravel()], what
    else:
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


# -- against expected.json (no TF needed) ------------------------------------------------------


@pytest.mark.parametrize("name, prefix, tensors", CHECKPOINTS, ids=CHECKPOINT_IDS)
def test_listing_matches_expected(name, prefix, tensors):
    path = prefix_of(name, prefix)
    assert dr.list_variables(path) == sorted((k, v["shape"]) for k, v in tensors.items())
    reader = dr.load_checkpoint(path)
    assert reader.get_variable_to_shape_map() == {k: v["shape"] for k, v in tensors.items()}
    dtype_map = reader.get_variable_to_dtype_map()
    assert set(dtype_map) == set(tensors)
    for k, v in tensors.items():
        assert dtype_map[k] == dtypes.BY_NAME[v["dtype"]].numpy, k
        assert reader.index.entries[k].dtype.name == v["dtype"], k
        assert reader.has_tensor(k)
    assert not reader.has_tensor("no/such/tensor")


@pytest.mark.parametrize("name, prefix, tensors", CHECKPOINTS, ids=CHECKPOINT_IDS)
def test_values_match_expected_digests(name, prefix, tensors):
    reader = dr.load_checkpoint(prefix_of(name, prefix))
    wrong = []
    for tensor, info in tensors.items():
        if info["sha256"] is None:  # TF cannot return it (variant)
            with pytest.raises(ValueError):
                reader.get_tensor(tensor)
            continue
        value = reader.get_tensor(tensor)
        if value_digest(value) != info["sha256"]:
            wrong.append(tensor)
        if info["shape"] == []:  # like TF: a numpy scalar, or bytes for a scalar string
            assert isinstance(value, bytes if info["dtype"] == "string" else np.generic), tensor
        else:
            assert list(value.shape) == info["shape"], tensor
            assert value.dtype == dtypes.BY_NAME[info["dtype"]].numpy, tensor
    assert wrong == []


def test_restore_all_tensors_at_once_matches_digests():
    exp = expected("many_small")
    values = dr.restore_tensors(prefix_of("many_small"))
    assert sorted(values) == sorted(exp["tensors"])
    assert [k for k, v in values.items() if value_digest(v) != exp["tensors"][k]["sha256"]] == []


class _Readers(dict):
    def get(self, key):
        if key not in self:
            name, prefix = key.split("/", 1)
            self[key] = dr.load_checkpoint(prefix_of(name, prefix))
        return self[key]


READERS = _Readers()


@pytest.mark.parametrize("name", [n for n in V2_FIXTURES if "latest_checkpoint" in expected(n)])
def test_directory_resolves_to_latest_checkpoint(name):
    d = str(FIXTURES / name)
    exp = expected(name)
    assert dr.latest_checkpoint(d) == os.path.join(d, exp["latest_checkpoint"])
    reader = dr.load_checkpoint(d)
    assert reader.prefix == os.path.join(d, exp["prefix"])
    assert dr.list_variables(d) == sorted((k, v["shape"]) for k, v in exp["tensors"].items())


def test_checkpoint_state_lists_all_manager_checkpoints():
    d = str(FIXTURES / "manager")
    exp = expected("manager")
    state = dr.get_checkpoint_state(d)
    assert state.model_checkpoint_path == os.path.join(d, exp["latest_checkpoint"])
    assert state.all_model_checkpoint_paths == [os.path.join(d, p) for p in exp["manager_checkpoints"]]
    assert len(state.all_model_checkpoint_timestamps) == 3
    # every listed checkpoint opens and holds its own values
    for p in state.all_model_checkpoint_paths:
        rel = os.path.basename(p)
        tensors = exp["tensors"] if rel == exp["prefix"] else exp["other_checkpoints"][rel]["tensors"]
        v = dr.load_variable(p, "v/.ATTRIBUTES/VARIABLE_VALUE")
        assert value_digest(v) == tensors["v/.ATTRIBUTES/VARIABLE_VALUE"]["sha256"]


def test_path_objects_accepted_by_readers():
    d = FIXTURES / "manager"
    assert dr.list_variables(d) == dr.list_variables(str(d))
    np.testing.assert_array_equal(
        dr.load_variable(d / "ckpt-4", "v/.ATTRIBUTES/VARIABLE_VALUE"),
        dr.load_variable(str(d / "ckpt-4"), "v/.ATTRIBUTES/VARIABLE_VALUE"),
    )
    assert dr.load_checkpoint(d).prefix == str(d / "ckpt-4")


def test_path_objects_accepted_by_latest_checkpoint():
    d = FIXTURES / "manager"
    assert dr.latest_checkpoint(d) == str(d / "ckpt-4")
    assert dr.get_checkpoint_state(d).model_checkpoint_path == str(d / "ckpt-4")


def test_saved_model_directory():
    d = FIXTURES / "saved_model"
    exp = expected("saved_model")
    reader = dr.load_checkpoint(str(d))
    assert reader.prefix == str(d / "variables" / "variables")
    for k, v in exp["tensors"].items():
        assert value_digest(reader.get_tensor(k)) == v["sha256"]
    assert dr.load_variable(str(d), "label/.ATTRIBUTES/VARIABLE_VALUE:0") == reader.get_tensor(
        "label/.ATTRIBUTES/VARIABLE_VALUE"
    )


def test_absolute_state_file_of_a_moved_directory_gives_none(tmp_path):
    d = tmp_path / "tf1"
    shutil.copytree(FIXTURES / "tf1_sharded", d)
    shutil.copy(d / "checkpoint.absolute", d / "checkpoint")
    exp = expected("tf1_sharded")["checkpoint_absolute"]
    state = dr.get_checkpoint_state(str(d))
    assert state.model_checkpoint_path == exp["state"]["model_checkpoint_path"]
    assert state.all_model_checkpoint_paths == exp["state"]["all_model_checkpoint_paths"]
    assert dr.latest_checkpoint(str(d)) is exp["latest_checkpoint"] is None
    with pytest.raises(ValueError, match="Couldn't find"):
        dr.load_checkpoint(str(d))


# -- partitioned tensors and slices -------------------------------------------------------------


def _formula(shape, dtype):
    n = int(np.prod(shape))
    if np.issubdtype(np.dtype(dtype), np.integer):
        return (np.arange(n, dtype=np.int64) * 1000003 - 5).reshape(shape).astype(dtype)
    return (np.arange(n, dtype=np.float64) * 0.5 - 7.25).reshape(shape).astype(dtype)


PARTITIONED = [("tf1_sharded", n) for n in expected("tf1_sharded")["partitions"]] + [("merged", "split")]


@pytest.mark.parametrize("name, tensor", PARTITIONED)
def test_partitioned_tensor_assembled(name, tensor):
    exp = expected(name)
    reader = dr.load_checkpoint(prefix_of(name))
    value = reader.get_tensor(tensor)
    assert value_digest(value) == exp["partition_full_sha256"][tensor] == exp["tensors"][tensor]["sha256"]
    if name == "tf1_sharded":
        np.testing.assert_array_equal(value, _formula(value.shape, value.dtype))
    else:
        np.testing.assert_array_equal(value, np.arange(30, dtype=np.float32).reshape(10, 3) * 1.5)
    # the slice entries are hidden from listings, and each spec's region reads back its part
    assert all(not k.startswith("\x00") for k in reader.get_variable_to_shape_map())
    assert list(reader.index.entries[tensor].shape) == exp["tensors"][tensor]["shape"]
    for spec in exp["partitions"][tensor]:
        shape, extents = parse_spec(spec)
        region = tuple(slice(a, b) for a, b in to_box(extents, shape))
        np.testing.assert_array_equal(reader.get_slice(tensor, region), value[region])


REGIONS = [
    (slice(0, 10),),
    (slice(3, 9), slice(1, 3)),
    (slice(5, 6),),
    (slice(0, 0),),
    (slice(-3, None),),
    (slice(None), slice(2, 3)),
    (slice(7, 100), slice(0, 2)),
]


@pytest.mark.parametrize("region", REGIONS, ids=[str(r) for r in REGIONS])
@pytest.mark.parametrize(
    "tensor",
    ["part_rows", "part_cols", "big/part5", "part_int64", "scope1/w", "scope2/nested/v", "scope2/nested/label"],
)
def test_get_slice_equals_numpy_slicing(tensor, region):
    reader = READERS.get("tf1_sharded/model.ckpt-7")
    full = reader.get_tensor(tensor)
    region = region[: full.ndim]
    got = reader.get_slice(tensor, region)
    want = full[region]
    assert got.shape == want.shape and got.dtype == want.dtype
    if full.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


# -- variant and V1 ------------------------------------------------------------------------------


def test_variant_tensor_refused_and_raw_records():
    exp = expected("variant")
    reader = dr.load_checkpoint(prefix_of("variant"))
    name = "it/.ATTRIBUTES/ITERATOR_STATE"
    assert reader.get_variable_to_shape_map()[name] == exp["tensors"][name]["shape"]
    with pytest.raises(dr.UnsupportedCheckpointError, match="VARIANT") as e:
        reader.get_tensor(name)
    assert isinstance(e.value, ValueError) and name in str(e.value)
    records = reader.get_variant_records(name)
    n = int(np.prod(exp["tensors"][name]["shape"]))
    assert records.shape == (n,) and n >= 3
    for rec in records:
        fields = {num: val for num, wire, val in iter_fields(rec) if wire == LENGTH}
        assert fields[1] == b"tensorflow::Iterator"  # VariantTensorDataProto.type_name
    with pytest.raises(ValueError):
        reader.get_variant_records("save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    # the rest of the checkpoint reads normally
    assert (
        value_digest(reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE"))
        == exp["tensors"]["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]["sha256"]
    )


@pytest.mark.parametrize("how", ["prefix", "directory", "list_variables"])
def test_v1_format_refused(how):
    path = prefix_of("v1_format") if how != "directory" else str(FIXTURES / "v1_format")
    fn = dr.list_variables if how == "list_variables" else dr.load_checkpoint
    with pytest.raises(dr.UnsupportedCheckpointError, match="V1") as e:
        fn(path)
    assert isinstance(e.value, ValueError)
    assert "model.ckpt" in str(e.value)


# -- load_variable and errors --------------------------------------------------------------------


def test_load_variable_strips_one_trailing_colon_zero():
    p = prefix_of("tf1_sharded")
    want = dr.load_checkpoint(p).get_tensor("scope1/w")
    np.testing.assert_array_equal(dr.load_variable(p, "scope1/w:0"), want)
    np.testing.assert_array_equal(dr.load_variable(p, "scope1/w"), want)
    with pytest.raises(KeyError):
        dr.load_variable(p, "scope1/w:0:0")
    with pytest.raises(KeyError):  # get_tensor itself does not strip
        dr.load_checkpoint(p).get_tensor("scope1/w:0")


def test_missing_key_is_key_error_naming_it():
    reader = dr.load_checkpoint(prefix_of("all_dtypes"))
    with pytest.raises(dr.TensorNotFoundError, match="no/such") as e:
        reader.get_tensor("no/such")
    assert isinstance(e.value, KeyError) and isinstance(e.value, dr.DistRestoreError)
    assert "Key no/such not found in checkpoint" in str(e.value)


def test_missing_prefix_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope") as e:
        dr.load_checkpoint(str(tmp_path / "nope"))
    assert isinstance(e.value, dr.DistRestoreError)
    with pytest.raises(FileNotFoundError):
        dr.list_variables(str(FIXTURES / "all_dtypes" / "al"))  # a prefix of a prefix is not a match


def test_empty_directory_is_value_error_and_file_not_found(tmp_path):
    with pytest.raises(ValueError, match="Couldn't find 'checkpoint' file") as e:
        dr.load_checkpoint(str(tmp_path))
    assert isinstance(e.value, FileNotFoundError)
    assert dr.latest_checkpoint(str(tmp_path)) is None


# -- only the bytes asked for are read -------------------------------------------------------------


def _data_bytes(storage: CountingStorage) -> int:
    return sum(end - start for _, start, end in storage.data_requests())


def _counted(name):
    storage = CountingStorage()
    index = dr.open_checkpoint(prefix_of(name), storage=storage)
    assert storage.requests and _data_bytes(storage) == 0  # opening reads the index only
    storage.reset()
    return dr.CheckpointReader(index), storage


@pytest.mark.parametrize(
    "name, tensor",
    [
        ("all_dtypes", "string/long_70k"),
        ("all_dtypes", "dtype/float64"),
        ("all_dtypes", "string/long_300"),
        ("tf2_keras", "optimizer/_variables/6/.ATTRIBUTES/VARIABLE_VALUE"),
        ("many_small", "layer_1234/w"),
        ("tf1_sharded", "scope2/nested/v"),
    ],
)
def test_get_tensor_reads_only_its_bytes(name, tensor):
    reader, storage = _counted(name)
    index = reader.index
    entry = index.entries[tensor]
    # TF2 sharded saves (MaxShardSizePolicy) store big variables as slices in several shards
    stored = [index.slice_entry(tensor, s) for s in entry.slices] if entry.slices else [entry]
    value = reader.get_tensor(tensor)
    assert value_digest(value) == expected(name)["tensors"][tensor]["sha256"]
    assert _data_bytes(storage) == sum(e.size for e in stored) > 0
    assert {url for url, _, _ in storage.requests} == {index.data_file(e.shard_id) for e in stored}
    for url, start, end in storage.requests:  # each read lies inside one of the tensor's entries
        assert any(
            index.data_file(e.shard_id) == url and e.offset <= start and end <= e.offset + e.size for e in stored
        )


def test_partitioned_tensor_reads_only_its_slices():
    reader, storage = _counted("tf1_sharded")
    reader.get_tensor("big/part5")
    assert _data_bytes(storage) == 100 * 8 * 4


@pytest.mark.parametrize(
    "region, nbytes",
    [
        ((slice(25, 35),), 20 * 8 * 4),  # inside one stored part: that part, whole
        ((slice(15, 25),), 2 * 20 * 8 * 4),  # across two parts: both, whole
        ((slice(99, 100),), 20 * 8 * 4),
    ],
)
def test_get_slice_of_partitioned_tensor_reads_the_parts_it_touches(region, nbytes):
    """Like TF's RestoreV2 with a slice spec: every stored part the region touches is read whole,
    so that its CRC32C (which covers the whole part) is checked; the other parts are not read."""
    reader, storage = _counted("tf1_sharded")
    got = reader.get_slice("big/part5", region)
    np.testing.assert_array_equal(got, _formula((100, 8), np.float32)[region])
    assert _data_bytes(storage) == nbytes


def test_get_slice_of_plain_tensor_reads_its_entry_once():
    reader, storage = _counted("many_small")
    got = reader.get_slice("layer_0007/w", (slice(1, 3),))
    np.testing.assert_array_equal(got, reader.get_tensor("layer_0007/w")[1:3])
    entry = reader.index.entries["layer_0007/w"]
    url, start, end = storage.requests[0]  # the slice's read (the second is get_tensor's)
    assert (start, end) == (entry.offset, entry.offset + entry.size)


# -- against live TensorFlow -----------------------------------------------------------------------


@pytest.mark.parametrize("name, prefix, tensors", CHECKPOINTS, ids=CHECKPOINT_IDS)
def test_differential_against_tf(tf, name, prefix, tensors):
    path = prefix_of(name, prefix)
    theirs = tf.train.load_checkpoint(path)
    ours = dr.load_checkpoint(path)
    assert dr.list_variables(path) == [(k, list(s)) for k, s in tf.train.list_variables(path)]
    assert ours.get_variable_to_shape_map() == theirs.get_variable_to_shape_map()
    tdt = theirs.get_variable_to_dtype_map()
    odt = ours.get_variable_to_dtype_map()
    assert set(tdt) == set(odt)
    for k, d in tdt.items():
        assert ours.index.entries[k].dtype.name == d.name, k
        assert odt[k] == dtypes.BY_NAME[d.name].numpy, k
    for k in tdt:
        if tdt[k].name == "variant":
            with pytest.raises(tf.errors.InternalError):
                theirs.get_tensor(k)
            with pytest.raises(ValueError):
                ours.get_tensor(k)
            continue
        assert_bit_exact(ours.get_tensor(k), theirs.get_tensor(k), k)
        assert theirs.has_tensor(k) and ours.has_tensor(k)


@pytest.mark.parametrize("name", [n for n in V2_FIXTURES + ["v1_format"]])
def test_latest_checkpoint_matches_tf(tf, name):
    d = str(FIXTURES / name)
    assert dr.latest_checkpoint(d) == tf.train.latest_checkpoint(d)


def test_unparseable_state_file_is_like_no_state_file(tmp_path):
    (tmp_path / "checkpoint").write_text("this is { not a state file")
    with pytest.warns(UserWarning, match="state file ignored"):
        assert dr.get_checkpoint_state(str(tmp_path)) is None
    with pytest.warns(UserWarning, match="state file ignored"):
        assert dr.latest_checkpoint(str(tmp_path)) is None
    with pytest.raises(ValueError, match="Couldn't find"), pytest.warns(UserWarning):
        dr.load_checkpoint(str(tmp_path))


def test_unparseable_state_file_tf_behaviour(tf, tmp_path):
    """What the test above expects, checked against TF itself."""
    (tmp_path / "checkpoint").write_text("this is { not a state file")
    assert tf.train.get_checkpoint_state(str(tmp_path)) is None
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    with pytest.raises(ValueError, match="Couldn't find"):
        tf.train.load_checkpoint(str(tmp_path))


def test_checkpoint_state_matches_tf(tf):
    for name in V2_FIXTURES:
        d = str(FIXTURES / name)
        theirs = tf.train.get_checkpoint_state(d)
        ours = dr.get_checkpoint_state(d)
        if theirs is None:
            assert ours is None, name
            continue
        assert ours.model_checkpoint_path == theirs.model_checkpoint_path
        assert ours.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)
        assert ours.all_model_checkpoint_timestamps == list(theirs.all_model_checkpoint_timestamps)


def test_manager_checkpoints_match_tf_checkpoint_manager(tf, tmp_path):
    d = tmp_path / "manager"
    shutil.copytree(FIXTURES / "manager", d)
    ckpt = tf.train.Checkpoint(v=tf.Variable(tf.zeros([2, 3])), step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(ckpt, str(d), max_to_keep=3)
    assert dr.get_checkpoint_state(str(d)).all_model_checkpoint_paths == list(manager.checkpoints)
    assert dr.latest_checkpoint(str(d)) == manager.latest_checkpoint


def test_load_variable_matches_tf(tf):
    p = prefix_of("tf1_sharded")
    for name in ("scope1/w:0", "part_rows:0", "scope2/nested/label"):
        assert_bit_exact(dr.load_variable(p, name), tf.train.load_variable(p, name), name)
    with pytest.raises(tf.errors.NotFoundError):
        tf.train.load_variable(p, "scope1/w:0:0")
    with pytest.raises(KeyError):
        dr.load_variable(p, "scope1/w:0:0")


def test_error_kinds_match_tf(tf, tmp_path):
    p = prefix_of("all_dtypes")
    # missing key: NotFoundError <-> KeyError
    with pytest.raises(tf.errors.NotFoundError):
        tf.train.load_checkpoint(p).get_tensor("no/such")
    with pytest.raises(KeyError):
        dr.load_checkpoint(p).get_tensor("no/such")
    # missing prefix: NotFoundError <-> FileNotFoundError
    missing = str(tmp_path / "nope")
    with pytest.raises(tf.errors.NotFoundError):
        tf.train.load_checkpoint(missing)
    with pytest.raises(FileNotFoundError):
        dr.load_checkpoint(missing)
    # a directory without checkpoints: ValueError in both
    with pytest.raises(ValueError):
        tf.train.load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError):
        dr.load_checkpoint(str(tmp_path))


def test_slices_match_tf_restore_v2(tf):
    """Regions of a partitioned and a plain tensor read like TF's RestoreV2 with a slice spec."""
    p = prefix_of("tf1_sharded")
    reader = READERS.get("tf1_sharded/model.ckpt-7")
    for tensor, shape, spec in [
        ("big/part5", (100, 8), "100 8 15,20:2,5"),
        ("part_cols", (4, 7), "4 7 1,2:3,3"),
        ("scope1/w", (3, 4), "3 4 1,2:0,4"),
    ]:
        (theirs,) = tf.raw_ops.RestoreV2(prefix=p, tensor_names=[tensor], shape_and_slices=[spec], dtypes=[tf.float32])
        _, extents = parse_spec(spec)
        region = tuple(slice(a, b) for a, b in to_box(extents, shape))
        assert_bit_exact(reader.get_slice(tensor, region), theirs.numpy(), tensor)
