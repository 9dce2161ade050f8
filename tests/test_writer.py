"""Tests of the writer: ``dr.save_tensors`` (every dtype, strings, scalars, empty tensors, several
shards) read back by distrestore and by live TF bit-exactly, and ``dr.merge_checkpoints`` with
TF's merge semantics (shard numbering, duplicate keys refused, slices joined) except that data
files are linked, not moved, sources are removed only with ``delete_sources=True``, and no
directory is ever deleted. Kills and failures midway: ``test_writes_atomic.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from checks import assert_bit_exact

import distrestore as dr
from distrestore.format import messages, sstable
from distrestore.format.slices import parse_spec, to_box
from distrestore.format.wire import read_varint


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _strings(values, shape=None):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr.reshape(shape if shape is not None else (len(values),))


def sample_tensors() -> dict:
    rng = np.random.default_rng(1234)
    t: dict = {}
    floats = np.array([[0.5, -1.5, np.nan], [np.inf, -np.inf, -0.0]])
    for name in ("float16", "float32", "float64"):
        t[f"dtype/{name}"] = floats.astype(name)
    t["dtype/float32_random"] = rng.standard_normal((5, 7)).astype(np.float32)
    t["dtype/bfloat16"] = np.array([[1.0, -2.5, np.nan], [np.inf, 3.14159, -0.0]]).astype(ml_dtypes.bfloat16)
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(name)
        t[f"dtype/{name}"] = np.array([[info.min, info.max, 0], [1, -1 if info.min else 2, 7]], dtype=name)
    t["dtype/bool"] = np.array([[True, False, True], [False, False, True]])
    t["dtype/complex64"] = np.array([[1 + 2j, -0.5j, np.nan], [np.inf, -1 - 1j, 0]], dtype=np.complex64)
    t["dtype/complex128"] = (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))).astype(np.complex128)
    t["dtype/float8_e5m2"] = np.array([[0.5, -2.0, 57344.0], [np.inf, np.nan, -0.0]]).astype(ml_dtypes.float8_e5m2)
    t["dtype/float8_e4m3fn"] = np.array([[0.5, -2.0, 448.0], [0.001953125, np.nan, -0.0]]).astype(
        ml_dtypes.float8_e4m3fn
    )
    t["dtype/int4"] = np.array([[1, -8, 7], [-2, 0, 3]], dtype=ml_dtypes.int4)
    t["dtype/uint4"] = np.array([[1, 15, 0], [3, 5, 2]], dtype=ml_dtypes.uint4)
    t["string/special"] = _strings(
        [b"plain", b"nul\x00in\x00side", b"\xff\xfe\x00\xff", "üñíçødé ✓ 漢字".encode(), b""]
    )
    t["string/long_300"] = _strings([b"y" * 301, b"z" * 128])
    t["string/long_70k"] = bytes(range(256)) * 280  # a 71,680-byte scalar
    t["string/2d"] = _strings([b"a", b"", b"ccc", b"\x00", b"e" * 200, b"f"], (2, 3))
    t["string/empty_tensor"] = _strings([])
    t["string/empty_scalar"] = b""
    t["scalar/float32"] = np.float32(3.25)
    t["scalar/int64"] = np.int64(-(2**62))
    t["scalar/bool"] = np.bool_(True)
    t["scalar/bfloat16"] = np.array(-0.75, dtype=ml_dtypes.bfloat16)
    t["empty/float32_0"] = np.zeros((0,), np.float32)
    t["empty/int32_3x0"] = np.zeros((3, 0), np.int32)
    t["empty/bfloat16_0x2"] = np.zeros((0, 2), ml_dtypes.bfloat16)
    t["rank3/float32"] = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    t["rank3/int16"] = np.arange(6, dtype=np.int16).reshape(3, 1, 2) - 3
    t["names/ünï/cödé"] = np.arange(3, dtype=np.float64)
    t["names/a.b/.S/:0"] = np.arange(2, dtype=np.int32)
    return t


def _expected_value(v):
    """What a reader returns for an input value (bytes for a scalar string, else arrays/scalars)."""
    if isinstance(v, bytes):
        return v
    return np.asarray(v)


# -- save_tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [1, 3])
def test_save_tensors_read_back_by_distrestore(tmp_path, num_shards):
    tensors = sample_tensors()
    prefix = str(tmp_path / "sub" / "ckpt")
    assert dr.save_tensors(prefix, tensors, num_shards=num_shards) == prefix
    files = sorted(os.listdir(tmp_path / "sub"))
    assert files == sorted(["ckpt.index"] + [f"ckpt.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)])
    reader = dr.load_checkpoint(prefix)
    assert dr.list_variables(prefix) == sorted((k, list(np.shape(v))) for k, v in tensors.items())
    assert reader.index.header.num_shards == num_shards
    if num_shards > 1:
        assert len({e.shard_id for e in reader.index.entries.values()}) == num_shards
    for k, v in tensors.items():
        ours = reader.get_tensor(k)
        want = _expected_value(v)
        if not isinstance(want, bytes) and want.ndim == 0:
            assert isinstance(ours, np.generic), k
            want = want[()]
        assert_bit_exact(ours, want, k)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_save_tensors_read_by_tf(tf, tmp_path, num_shards):
    tensors = sample_tensors()
    prefix = str(tmp_path / "ckpt")
    dr.save_tensors(prefix, tensors, num_shards=num_shards)
    reader = tf.train.load_checkpoint(prefix)
    assert [(k, list(s)) for k, s in tf.train.list_variables(prefix)] == sorted(
        (k, list(np.shape(v))) for k, v in tensors.items()
    )
    dtype_map = reader.get_variable_to_dtype_map()
    for k, v in tensors.items():
        want = _expected_value(v)
        theirs = reader.get_tensor(k)
        if isinstance(want, bytes):
            assert theirs == want, k
            assert dtype_map[k] == tf.string
            continue
        assert dtype_map[k].name == ("string" if want.dtype == object else want.dtype.name), k
        assert_bit_exact(theirs, want[()] if want.ndim == 0 else want, k)


def test_save_tensors_matches_tf_save_v2_bytes(tf, tmp_path):
    """One shard: the data file is byte-identical to SaveV2's for the same tensors in name order,
    and the index is identical up to the index block (TF shortens the last separator)."""
    tensors = sample_tensors()
    names = sorted(tensors, key=lambda n: n.encode())
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    dr.save_tensors(ours, tensors)
    tf.raw_ops.SaveV2(
        prefix=theirs,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    assert Path(ours + ".data-00000-of-00001").read_bytes() == Path(theirs + ".data-00000-of-00001").read_bytes()
    a, b = Path(ours + ".index").read_bytes(), Path(theirs + ".index").read_bytes()
    assert sstable.read_table(a, "ours") == sstable.read_table(b, "theirs")
    footer = b[-48:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    index_offset, _ = read_varint(footer, pos)
    assert a[:index_offset] == b[:index_offset]


def test_save_tensors_more_shards_than_tensors(tf, tmp_path):
    prefix = str(tmp_path / "ckpt")
    dr.save_tensors(prefix, {"only": np.arange(4, dtype=np.float32)}, num_shards=3)
    np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor("only"), np.arange(4))
    np.testing.assert_array_equal(dr.load_variable(prefix, "only"), np.arange(4))


def test_save_tensors_many_tensors_index_spans_blocks(tmp_path):
    tensors = {f"layer_{i:05d}/" + "k" * 100: np.full(2, i, np.int32) for i in range(3000)}
    prefix = str(tmp_path / "many")
    dr.save_tensors(prefix, tensors)
    assert len(list(sstable.read_blocks(Path(prefix + ".index").read_bytes(), "many"))) >= 2
    values = dr.restore_tensors(prefix)
    assert all(values[k][0] == int(k[6:11]) for k in tensors)


def test_save_tensors_accepts_str_and_lists(tmp_path):
    prefix = str(tmp_path / "c")
    dr.save_tensors(prefix, {"s": "héllo", "l": [1.5, 2.5], "strs": ["a", b"b"]})
    r = dr.load_checkpoint(prefix)
    assert r.get_tensor("s") == "héllo".encode()
    assert r.get_tensor("l").dtype == np.float64
    assert r.get_tensor("strs").tolist() == [b"a", b"b"]


def test_save_tensors_lists_of_strings_keep_trailing_nul_bytes(tmp_path):
    # np.asarray would make fixed-width S/U arrays, which silently drop trailing NUL bytes
    prefix = str(tmp_path / "c")
    dr.save_tensors(
        prefix,
        {"b": [b"a\x00", b"\x00"], "s": ["x\x00"], "n": [[b"p\x00\x00"], [b"q"]], "mixed": ["é\x00", b"\xff\x00"]},
    )
    r = dr.load_checkpoint(prefix)
    assert r.get_tensor("b").tolist() == [b"a\x00", b"\x00"]
    assert r.get_tensor("s").tolist() == [b"x\x00"]
    assert r.get_tensor("n").tolist() == [[b"p\x00\x00"], [b"q"]]
    assert r.get_tensor("mixed").tolist() == ["é\x00".encode(), b"\xff\x00"]


def test_save_and_merge_accept_path_objects(tmp_path):
    a = dr.save_tensors(tmp_path / "a" / "a", {"x": np.arange(3)})
    b = dr.save_tensors(tmp_path / "b", {"y": np.arange(2)})
    assert a == str(tmp_path / "a" / "a")
    dest = dr.merge_checkpoints([Path(a), Path(b)], tmp_path / "m")
    assert dest == str(tmp_path / "m")
    assert dr.list_variables(tmp_path / "m") == [("x", [3]), ("y", [2])]


def test_save_tensors_big_endian_input_is_stored_little_endian(tmp_path):
    prefix = str(tmp_path / "c")
    dr.save_tensors(prefix, {"be": np.arange(5, dtype=">i4")})
    raw = Path(prefix + ".data-00000-of-00001").read_bytes()
    assert raw == np.arange(5, dtype="<i4").tobytes()
    np.testing.assert_array_equal(dr.load_variable(prefix, "be"), np.arange(5))


def test_save_tensors_non_contiguous_input(tmp_path):
    prefix = str(tmp_path / "c")
    base = np.arange(20, dtype=np.float32).reshape(4, 5)
    dr.save_tensors(prefix, {"t": base.T, "s": base[::2, 1:4]})
    np.testing.assert_array_equal(dr.load_variable(prefix, "t"), base.T)
    np.testing.assert_array_equal(dr.load_variable(prefix, "s"), base[::2, 1:4])


def test_save_tensors_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        dr.save_tensors(str(tmp_path / "a"), {"": np.zeros(1)})
    with pytest.raises(ValueError):
        dr.save_tensors(str(tmp_path / "b"), {"x": np.zeros(1)}, num_shards=0)
    with pytest.raises(ValueError):
        dr.save_tensors(str(tmp_path / "c"), {"x": np.zeros(1, dtype="datetime64[s]")})


def test_save_tensors_leaves_no_temp_files(tmp_path):
    dr.save_tensors(str(tmp_path / "c"), sample_tensors(), num_shards=2)
    assert not [f for f in os.listdir(tmp_path) if "tempstate" in f]


# -- merge_checkpoints ----------------------------------------------------------------------------


def _three_sources(root: Path):
    srcs = {
        root / "src1" / "a": {"a/x": np.arange(6, dtype=np.float32).reshape(2, 3), "a/s": _strings([b"p", b"\x00q"])},
        root / "src2" / "b": {"b/y": np.int64(-5), "b/z": np.array([True, False])},
        root / "src3" / "c": {"c/w": np.arange(40, dtype=np.float64), "c/v": np.arange(30, dtype=np.int16)},
    }
    for p, t in srcs.items():
        dr.save_tensors(str(p), t, num_shards=2 if p.name == "c" else 1)
    (root / "src3" / "keep.txt").write_text("user data")
    return srcs


@pytest.mark.parametrize("delete_sources", [False, True])
def test_merge_semantics(tmp_path, delete_sources):
    srcs = _three_sources(tmp_path)
    data_inodes = {}
    for p in srcs:
        for f in sorted(p.parent.glob(p.name + ".data-*")):
            data_inodes[f] = f.stat().st_ino
    dest = tmp_path / "out" / "merged"
    assert dr.merge_checkpoints([str(p) for p in srcs], str(dest), delete_sources=delete_sources) == str(dest)

    union = {k: v for t in srcs.values() for k, v in t.items()}
    assert dr.list_variables(str(dest)) == sorted((k, list(np.shape(v))) for k, v in union.items())
    reader = dr.load_checkpoint(str(dest))
    for k, v in union.items():
        assert_bit_exact(
            reader.get_tensor(k), v if isinstance(v, bytes) else np.asarray(v)[()] if np.ndim(v) == 0 else v, k
        )

    # data files hard-linked (same inodes), never copied on one filesystem; 1 + 1 + 2 shards
    merged_files = sorted(dest.parent.glob("merged.data-*"))
    assert [f.name for f in merged_files] == [f"merged.data-{i:05d}-of-00004" for i in range(4)]
    assert sorted(f.stat().st_ino for f in merged_files) == sorted(data_inodes.values())
    assert not list(tmp_path.rglob("*tempstate*"))
    if not delete_sources:  # the sources are untouched and still read
        assert all(f.exists() for f in data_inodes)
        for p, tensors in srcs.items():
            assert dr.list_variables(str(p)) == sorted((k, list(np.shape(v))) for k, v in tensors.items())
        return
    # sources removed (indexes and data files); source directories kept even when now empty
    assert not any(f.exists() for f in data_inodes)
    for p in srcs:
        assert not Path(str(p) + ".index").exists()
        assert p.parent.is_dir()
    assert os.listdir(tmp_path / "src1") == [] and os.listdir(tmp_path / "src2") == []
    assert os.listdir(tmp_path / "src3") == ["keep.txt"]
    assert (tmp_path / "src3" / "keep.txt").read_text() == "user data"


def test_merge_into_a_source_directory(tmp_path):
    dr.save_tensors(str(tmp_path / "part-0"), {"x": np.arange(3)})
    dr.save_tensors(str(tmp_path / "part-1"), {"y": np.arange(4)})
    dest = str(tmp_path / "model")
    parts = [str(tmp_path / "part-0"), str(tmp_path / "part-1")]
    dr.merge_checkpoints(parts, dest)
    merged = ["model.data-00000-of-00002", "model.data-00001-of-00002", "model.index"]
    sources = [f"part-{i}.{ext}" for i in range(2) for ext in ("data-00000-of-00001", "index")]
    assert sorted(os.listdir(tmp_path)) == sorted(merged + sources)
    np.testing.assert_array_equal(dr.load_variable(dest, "y"), np.arange(4))
    np.testing.assert_array_equal(dr.load_variable(parts[0], "x"), np.arange(3))
    dr.merge_checkpoints(parts, dest, delete_sources=True)  # over the first merge, then the sources go
    assert sorted(os.listdir(tmp_path)) == merged
    np.testing.assert_array_equal(dr.load_variable(dest, "y"), np.arange(4))


def test_merge_duplicate_key_is_refused_and_sources_kept(tmp_path):
    a, b = str(tmp_path / "a" / "a"), str(tmp_path / "b" / "b")
    dr.save_tensors(a, {"same": np.zeros(2), "only_a": np.ones(1)})
    dr.save_tensors(b, {"same": np.ones(2)})
    with pytest.raises(dr.MergeConflictError, match="same") as e:
        dr.merge_checkpoints([a, b], str(tmp_path / "m"))
    assert isinstance(e.value, ValueError) and isinstance(e.value, dr.DistRestoreError)
    # nothing was moved: both sources still read
    np.testing.assert_array_equal(dr.load_variable(a, "same"), np.zeros(2))
    np.testing.assert_array_equal(dr.load_variable(b, "same"), np.ones(2))
    assert not (tmp_path / "m.index").exists()


def test_merge_needs_sources(tmp_path):
    with pytest.raises(ValueError):
        dr.merge_checkpoints([], str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError):
        dr.merge_checkpoints([str(tmp_path / "missing")], str(tmp_path / "m"))


def _save_slices(tf, prefix, name, spec, value):
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[name], shape_and_slices=[spec], tensors=[tf.constant(value)])


def test_merge_joins_slices_from_two_sources(tf, tmp_path):
    full = np.arange(30, dtype=np.float32).reshape(10, 3) * 1.5
    a, b = str(tmp_path / "a" / "a"), str(tmp_path / "b" / "b")
    os.makedirs(os.path.dirname(a))
    os.makedirs(os.path.dirname(b))
    _save_slices(tf, a, "split", "10 3 0,5:-", full[:5])
    tf.raw_ops.SaveV2(
        prefix=b,
        tensor_names=["split", "other"],
        shape_and_slices=["10 3 5,5:-", ""],
        tensors=[tf.constant(full[5:]), tf.constant([7, 8])],
    )
    dest = str(tmp_path / "merged")
    dr.merge_checkpoints([a, b], dest)
    np.testing.assert_array_equal(dr.load_variable(dest, "split"), full)
    np.testing.assert_array_equal(tf.train.load_checkpoint(dest).get_tensor("split"), full)
    assert (
        dr.list_variables(dest)
        == [(k, list(s)) for k, s in tf.train.list_variables(dest)]
        == [("other", [2]), ("split", [10, 3])]
    )
    reader = dr.load_checkpoint(dest)
    assert sorted(reader.index.entries["split"].slices) == [((0, 5), (0, -1)), ((5, 5), (0, -1))]
    for spec in ("10 3 0,5:-", "10 3 5,5:-", "10 3 3,4:1,2"):
        shape, ext = parse_spec(spec)
        region = tuple(slice(x, y) for x, y in to_box(ext, shape))
        (theirs,) = tf.raw_ops.RestoreV2(
            prefix=dest, tensor_names=["split"], shape_and_slices=[spec], dtypes=[tf.float32]
        )
        np.testing.assert_array_equal(reader.get_slice("split", region), theirs.numpy())


def test_merge_same_slice_twice_refused(tf, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _save_slices(tf, a, "split", "4 0,2", np.zeros(2, np.float32))
    _save_slices(tf, b, "split", "4 0,2", np.ones(2, np.float32))
    with pytest.raises(dr.MergeConflictError):
        dr.merge_checkpoints([a, b], str(tmp_path / "m"))


def test_merge_slices_with_dtype_conflict_refused(tf, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _save_slices(tf, a, "split", "4 0,2", np.zeros(2, np.float32))
    _save_slices(tf, b, "split", "4 2,2", np.zeros(2, np.float64))
    with pytest.raises(dr.MergeConflictError):
        dr.merge_checkpoints([a, b], str(tmp_path / "m"))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_merge_matches_tf_merge(tf, tmp_path):
    from tensorflow.python.ops import gen_io_ops

    full = np.arange(24, dtype=np.int32).reshape(6, 4)
    base = tmp_path / "base"
    a, b, c = base / "a" / "a", base / "b" / "b", base / "c" / "c"
    for p in (a, b, c):
        p.parent.mkdir(parents=True)
    tf.raw_ops.SaveV2(
        prefix=str(a),
        tensor_names=["t", "s", "x"],
        shape_and_slices=["6 4 0,2:-", "", ""],
        tensors=[tf.constant(full[:2]), tf.constant([b"q", b""]), tf.constant(1.5)],
    )
    tf.raw_ops.SaveV2(
        prefix=str(b),
        tensor_names=["t", "y"],
        shape_and_slices=["6 4 2,4:0,2", ""],
        tensors=[tf.constant(full[2:, :2]), tf.constant(np.arange(5, dtype=np.uint16))],
    )
    dr.save_tensors(str(c), {"t2": np.ones((2, 2)), "z": b"zz"}, num_shards=2)
    tf.raw_ops.SaveV2(
        prefix=str(c) + "_t", tensor_names=["t"], shape_and_slices=["6 4 2,4:2,2"], tensors=[tf.constant(full[2:, 2:])]
    )
    ours_root, theirs_root = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(base, ours_root)
    shutil.copytree(base, theirs_root)
    rel = ["a/a", "b/b", "c/c", "c/c_t"]
    dr.merge_checkpoints([str(ours_root / r) for r in rel], str(ours_root / "m"), delete_sources=True)
    gen_io_ops.merge_v2_checkpoints([str(theirs_root / r) for r in rel], str(theirs_root / "m"), delete_old_dirs=False)
    ours, theirs = str(ours_root / "m"), str(theirs_root / "m")
    assert _tree(ours_root) == _tree(theirs_root)
    assert (
        dr.list_variables(ours)
        == dr.list_variables(theirs)
        == [(k, list(s)) for k, s in tf.train.list_variables(theirs)]
    )
    assert [(k, list(s)) for k, s in tf.train.list_variables(ours)] == dr.list_variables(theirs)
    tr_ours, tr_theirs = tf.train.load_checkpoint(ours), tf.train.load_checkpoint(theirs)
    d_ours, d_theirs = dr.load_checkpoint(ours), dr.load_checkpoint(theirs)
    for k, _ in dr.list_variables(theirs):
        want = tr_theirs.get_tensor(k)
        assert_bit_exact(tr_ours.get_tensor(k), want, k)
        assert_bit_exact(d_ours.get_tensor(k), want, k)
        assert_bit_exact(d_theirs.get_tensor(k), want, k)
    np.testing.assert_array_equal(d_ours.get_tensor("t"), full)

    # the merged tables hold the same keys and entries, shard numbering included, and the same
    # bytes up to the index block (TF shortens the last separator key)
    def table(path):
        items = sstable.read_table(Path(path + ".index").read_bytes(), path)
        out = {}
        for key, raw in items[1:]:
            e = messages.decode_entry(key.decode("latin-1"), raw)
            out[key] = (e.dtype, e.shape, e.shard_id, e.offset, e.size, e.crc32c, e.slices)
        return out, messages.decode_header(items[0][1], path)

    (t_ours, h_ours), (t_theirs, h_theirs) = table(ours), table(theirs)
    assert t_ours == t_theirs
    assert h_ours == h_theirs
    a, b = Path(ours + ".index").read_bytes(), Path(theirs + ".index").read_bytes()
    footer = b[-48:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    index_offset, _ = read_varint(footer, pos)
    assert a[:index_offset] == b[:index_offset]
    for i in range(5):  # the same source file went to the same merged shard
        name = f"m.data-{i:05d}-of-00005"
        assert (ours_root / name).read_bytes() == (theirs_root / name).read_bytes()


def test_merge_with_an_unused_source_shard_stays_readable(tf, tmp_path):
    """A source shard no entry refers to (3 shards, 2 tensors) is not moved. TF 2.21's own merge
    then names the files "-of-<files moved>" but writes num_shards = the sum, and cannot read its
    output; ours stays consistent and both readers read it."""
    dr.save_tensors(str(tmp_path / "c"), {"t2": np.ones((2, 2)), "z": b"zz"}, num_shards=3)
    dr.save_tensors(str(tmp_path / "e"), {"w": np.arange(3.0)})
    dest = str(tmp_path / "m")
    dr.merge_checkpoints([str(tmp_path / "c"), str(tmp_path / "e")], dest)
    n = dr.load_checkpoint(dest).index.header.num_shards
    for i in {e.shard_id for e in dr.load_checkpoint(dest).index.entries.values()}:
        assert os.path.exists(f"{dest}.data-{i:05d}-of-{n:05d}")
    np.testing.assert_array_equal(tf.train.load_checkpoint(dest).get_tensor("w"), np.arange(3.0))
    assert tf.train.load_checkpoint(dest).get_tensor("z") == b"zz"
    np.testing.assert_array_equal(dr.load_variable(dest, "t2"), np.ones((2, 2)))


def test_merge_numbers_shards_in_tf_key_order(tf, tmp_path):
    """TF numbers merged shards in index-key order, where stored-slice keys sort before every
    name: a source whose slice lives in its second data file puts that file first."""
    from tensorflow.python.ops import gen_io_ops

    for root in ("ours", "theirs"):
        d = tmp_path / root
        d.mkdir()
        tf.raw_ops.SaveV2(prefix=str(d / "x"), tensor_names=["a"], shape_and_slices=[""], tensors=[tf.constant([1.0])])
        _save_slices(tf, str(d / "y"), "t", "4 0,2", np.array([1.0, 2.0], np.float32))
        tf.raw_ops.SaveV2(prefix=str(d / "z"), tensor_names=["b"], shape_and_slices=[""], tensors=[tf.constant([3.0])])
        gen_io_ops.merge_v2_checkpoints([str(d / "x"), str(d / "y")], str(d / "m"), delete_old_dirs=False)
    dr.merge_checkpoints([str(tmp_path / "ours" / p) for p in ("m", "z")], str(tmp_path / "ours" / "f"))
    gen_io_ops.merge_v2_checkpoints(
        [str(tmp_path / "theirs" / p) for p in ("m", "z")], str(tmp_path / "theirs" / "f"), delete_old_dirs=False
    )
    ours, theirs = (dr.open_checkpoint(str(tmp_path / r / "f")) for r in ("ours", "theirs"))
    assert ours.slice_entry("t", ((0, 2),)).shard_id == theirs.slice_entry("t", ((0, 2),)).shard_id == 0
    assert {n: e.shard_id for n, e in ours.entries.items()} == {n: e.shard_id for n, e in theirs.entries.items()}
    for i in range(3):
        name = f"f.data-{i:05d}-of-00003"
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()
