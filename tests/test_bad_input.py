"""Bad input: every damaged or missing piece of a checkpoint gives a named error, a
``dr.DistRestoreError`` that is also the stdlib class a user catches, whose message names the file
and, where known, the tensor. Where TF is importable, TF fails on the same bytes with the
matching error kind (``RestoreV2``: DataLoss <-> ValueError, NotFound <-> FileNotFoundError).

Every test damages a copy of a committed fixture under ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import distrestore as dr
from distrestore.format import entry_table, messages, sstable
from distrestore.format.wire import read_varint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def copy_fixture(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def flip(path: Path, pos: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= mask
    path.write_bytes(bytes(data))


def entry_of(prefix, name):
    return dr.load_checkpoint(str(prefix)).index.entries[name]


def tf_restore(tf, prefix, name, dtype):
    return tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=[name], shape_and_slices=[""], dtypes=[dtype])


def assert_named(err: BaseException, *parts: str) -> None:
    assert isinstance(err, dr.DistRestoreError), type(err)
    for p in parts:
        assert p in str(err), (p, str(err))


# -- missing files --------------------------------------------------------------------------------


def test_missing_index(tmp_path, request):
    d = copy_fixture(tmp_path, "all_dtypes")
    (d / "all.index").unlink()
    with pytest.raises(FileNotFoundError) as e:
        dr.load_checkpoint(str(d / "all"))
    assert_named(e.value, str(d / "all"))
    with pytest.raises(FileNotFoundError):
        dr.list_variables(str(d / "all"))
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.NotFoundError):
            tf_restore(tf, d / "all", "dtype/float32", tf.float32)


def test_missing_data_shard(tmp_path, request):
    d = copy_fixture(tmp_path, "tf1_sharded")
    prefix = d / "model.ckpt-7"
    idx = dr.load_checkpoint(str(prefix)).index
    e = idx.entries["scope2/nested/v"]
    missing = Path(idx.data_file(e.shard_id))
    missing.unlink()
    # the index alone still lists everything (data files are opened on demand, like TF)
    assert dict(dr.list_variables(str(prefix)))["scope2/nested/v"] == [2, 2, 2]
    with pytest.raises(FileNotFoundError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor("scope2/nested/v")
    assert_named(err.value, str(missing))
    assert isinstance(err.value, OSError)
    # tensors in the other shards still read
    others = [n for n, x in idx.entries.items() if not x.slices and idx.data_file(x.shard_id) != str(missing)]
    assert others
    for n in others:
        dr.load_checkpoint(str(prefix)).get_tensor(n)
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.NotFoundError):
            tf_restore(tf, prefix, "scope2/nested/v", tf.int64)


def test_missing_shard_of_a_partitioned_tensor(tmp_path):
    d = copy_fixture(tmp_path, "tf1_sharded")
    prefix = d / "model.ckpt-7"
    idx = dr.load_checkpoint(str(prefix)).index
    shards = {idx.data_file(idx.slice_entry("big/part5", s).shard_id) for s in idx.entries["big/part5"].slices}
    victim = sorted(shards)[0]
    os.remove(victim)
    with pytest.raises(FileNotFoundError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor("big/part5")
    assert_named(err.value, victim, "big/part5")


def test_directory_without_checkpoint_file(tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")  # a bundle, but no `checkpoint` state file
    with pytest.raises(FileNotFoundError) as e:
        dr.load_checkpoint(str(d))
    assert isinstance(e.value, ValueError)  # TF raises ValueError here
    assert_named(e.value, str(d), "Couldn't find 'checkpoint' file")
    with pytest.raises(ValueError):
        dr.list_variables(str(d))


def test_state_file_pointing_at_a_missing_checkpoint(tmp_path):
    d = copy_fixture(tmp_path, "manager")
    for f in d.glob("ckpt-4.*"):
        f.unlink()
    assert dr.latest_checkpoint(str(d)) is None
    with pytest.raises(ValueError, match="Couldn't find"):
        dr.load_checkpoint(str(d))


def test_unknown_tensor_name():
    prefix = str(FIXTURES / "all_dtypes" / "all")
    with pytest.raises(KeyError) as e:
        dr.load_checkpoint(prefix).get_tensor("dtype/float33")
    assert isinstance(e.value, dr.TensorNotFoundError)
    assert_named(e.value, "dtype/float33", prefix)
    with pytest.raises(dr.TensorNotFoundError):
        dr.load_variable(prefix, "dtype/float33:0")
    with pytest.raises(dr.TensorNotFoundError):
        dr.load_checkpoint(prefix).get_slice("nope", (slice(0, 1),))
    with pytest.raises(dr.TensorNotFoundError):
        dr.restore_tensors(prefix, ["dtype/float32", "nope"])


# -- damaged index --------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 10, 47, 48, 100, 1000, -1])
def test_truncated_index(tmp_path, keep):
    d = copy_fixture(tmp_path, "all_dtypes")
    index = d / "all.index"
    data = index.read_bytes()
    index.write_bytes(data[:keep])
    with pytest.raises(ValueError) as e:
        dr.load_checkpoint(str(d / "all"))
    assert_named(e.value, str(index))
    assert "too short" in str(e.value) or "bad magic" in str(e.value)


def _block_positions(index: Path) -> dict:
    data = index.read_bytes()
    footer = data[-48:]
    meta_off, pos = read_varint(footer, 0)
    meta_size, pos = read_varint(footer, pos)
    idx_off, pos = read_varint(footer, pos)
    idx_size, _ = read_varint(footer, pos)
    return {
        "data block start": 0,
        "data block middle": meta_off // 2,
        "data block last byte": meta_off - 6,
        "data block trailer type": meta_off - 5,
        "data block trailer crc": meta_off - 2,
        # (not the metaindex: TF never reads it, so a flip there goes unnoticed by TF too)
        "index block": idx_off + 1,
        "index block trailer crc": idx_off + idx_size + 2,
    }


@pytest.mark.parametrize("where", list(_block_positions(FIXTURES / "all_dtypes" / "all.index")))
def test_flipped_byte_in_an_index_block(tmp_path, where):
    d = copy_fixture(tmp_path, "all_dtypes")
    index = d / "all.index"
    flip(index, _block_positions(index)[where])
    with pytest.raises(ValueError, match="block checksum mismatch") as e:
        dr.load_checkpoint(str(d / "all"))
    assert_named(e.value, str(index))
    assert isinstance(e.value, dr.CorruptCheckpointError)


def test_flipped_block_byte_tf_fails_too(tf, tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")
    flip(d / "all.index", 20)
    with pytest.raises(tf.errors.DataLossError, match="checksum mismatch"):
        tf_restore(tf, d / "all", "dtype/float32", tf.float32)
    with pytest.raises(ValueError, match="checksum mismatch"):
        dr.load_checkpoint(str(d / "all"))


def test_flipped_byte_in_many_small_index(tmp_path):
    d = copy_fixture(tmp_path, "many_small")
    flip(d / "many.index", 30_000)
    with pytest.raises(ValueError, match="block checksum mismatch"):
        dr.list_variables(str(d / "many"))


def test_wrong_magic(tmp_path, request):
    d = copy_fixture(tmp_path, "all_dtypes")
    index = d / "all.index"
    flip(index, len(index.read_bytes()) - 3, 0xFF)
    with pytest.raises(ValueError, match="bad magic") as e:
        dr.load_checkpoint(str(d / "all"))
    assert_named(e.value, str(index))
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.DataLossError, match="bad magic"):
            tf_restore(tf, d / "all", "dtype/float32", tf.float32)


def test_not_an_index_at_all(tmp_path):
    (tmp_path / "x.index").write_bytes(b'model_checkpoint_path: "x"\n' * 10)
    with pytest.raises(ValueError, match="bad magic") as e:
        dr.load_checkpoint(str(tmp_path / "x"))
    assert_named(e.value, str(tmp_path / "x.index"))


def _write_index(prefix: Path, entries: list, header: bytes | None = None, data: bytes = b"") -> None:
    items = [(b"", header if header is not None else messages.encode_header(1))] + sorted(entries)
    Path(str(prefix) + ".index").write_bytes(sstable.build_table(items))
    Path(str(prefix) + ".data-00000-of-00001").write_bytes(data)


@pytest.mark.parametrize("accelerated", [True, False], ids=["C", "python"])
def test_unknown_dtype_enum(tmp_path, monkeypatch, accelerated):
    if not accelerated:  # the pure-Python index decoder, as on a machine without a compiler
        monkeypatch.setattr(entry_table, "native", None)
    prefix = tmp_path / "u"
    _write_index(
        prefix,
        [(b"weird/t", messages.encode_entry(999, [2], 0, 0, 8, 0)), (b"z", messages.encode_entry(1, [1], 0, 8, 4, 0))],
        data=bytes(12),
    )
    with pytest.raises(dr.UnsupportedCheckpointError) as e:
        dr.load_checkpoint(str(prefix))
    assert isinstance(e.value, ValueError)
    assert_named(e.value, "weird/t", "999", str(prefix) + ".index")


def test_entry_size_disagrees_with_shape(tmp_path, request):
    prefix = tmp_path / "s"
    data = np.arange(4, dtype=np.float32).tobytes()
    from distrestore.format import crc

    c = crc.mask(crc.value(data))
    _write_index(prefix, [(b"t", messages.encode_entry(1, [3], 0, 0, 16, c))], data=data)
    with pytest.raises(ValueError) as e:
        dr.load_checkpoint(str(prefix)).get_tensor("t")
    assert_named(e.value, "'t'", "size")
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.DataLossError, match="Invalid size"):
            tf_restore(tf, prefix, "t", tf.float32)


def test_shard_id_out_of_range(tmp_path):
    prefix = tmp_path / "s"
    _write_index(prefix, [(b"t", messages.encode_entry(1, [1], 5, 0, 4, 0))], data=bytes(4))
    with pytest.raises(ValueError) as e:
        dr.load_checkpoint(str(prefix)).get_tensor("t")
    assert_named(e.value, str(prefix))


def test_newer_bundle_version_refused(tmp_path):
    from distrestore.format.wire import LENGTH, VARINT, field

    prefix = tmp_path / "v"
    header = field(1, VARINT, 1) + field(3, LENGTH, field(1, VARINT, 2) + field(2, VARINT, 2))
    _write_index(prefix, [(b"t", messages.encode_entry(1, [1], 0, 0, 4, 0))], header=header, data=bytes(4))
    with pytest.raises(dr.UnsupportedCheckpointError) as e:
        dr.load_checkpoint(str(prefix))
    assert_named(e.value, str(prefix) + ".index")


def test_missing_slice_entry_of_partitioned_tensor(tmp_path):
    prefix = tmp_path / "p"
    _write_index(prefix, [(b"t", messages.encode_entry(1, [4], slices=[((0, 2),), ((2, 2),)]))])
    with pytest.raises(ValueError) as e:
        dr.load_checkpoint(str(prefix)).get_tensor("t")
    assert_named(e.value, "'t'", str(prefix))


def _sliced_index(prefix: Path, slices: list) -> None:
    """A float32 [4] tensor 't' stored as ``slices`` (each a (start, length) extent), with data."""
    from distrestore.format import crc
    from distrestore.format.slices import slice_key

    entries, data = [], b""
    for start, length in slices:
        part = np.arange(start, start + length, dtype=np.float32).tobytes()
        entries.append(
            (
                slice_key("t", ((start, length),)),
                messages.encode_entry(1, [length], 0, len(data), len(part), crc.mask(crc.value(part))),
            )
        )
        data += part
    entries.append((b"t", messages.encode_entry(1, [4], slices=[((s, n),) for s, n in slices])))
    _write_index(prefix, entries, data=data)


def test_partitioned_slices_that_overlap(tmp_path):
    _sliced_index(tmp_path / "p", [(0, 3), (2, 2)])
    with pytest.raises(ValueError, match="(?i)overlap") as e:
        dr.load_checkpoint(str(tmp_path / "p")).get_tensor("t")
    assert_named(e.value, "'t'", str(tmp_path / "p"))


def test_partitioned_slices_that_leave_a_gap(tmp_path):
    _sliced_index(tmp_path / "p", [(0, 1), (2, 2)])
    reader = dr.load_checkpoint(str(tmp_path / "p"))
    with pytest.raises(ValueError, match="sufficient slices") as e:
        reader.get_tensor("t")
    assert_named(e.value, "'t'", str(tmp_path / "p"))
    # a region inside the stored slices still reads
    np.testing.assert_array_equal(reader.get_slice("t", (slice(2, 4),)), [2.0, 3.0])
    _sliced_index(tmp_path / "ok", [(0, 1), (1, 3)])  # the same builder, covering: reads whole
    np.testing.assert_array_equal(dr.load_variable(str(tmp_path / "ok"), "t"), np.arange(4.0))


# -- damaged tensor data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor, pos",
    [
        ("dtype/float64", 3),
        ("dtype/float64", -1),
        ("dtype/int4", 0),
        ("rank3/float32", 50),
        ("string/long_70k", 40_000),
        ("string/special", -1),
        ("scalar/int64", 7),
    ],
)
def test_flipped_byte_in_tensor_data(tmp_path, tensor, pos):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    e = entry_of(prefix, tensor)
    data_file = d / "all.data-00000-of-00001"
    flip(data_file, e.offset + (pos if pos >= 0 else e.size + pos))
    with pytest.raises(dr.ChecksumMismatchError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor(tensor)
    assert isinstance(err.value, ValueError)
    assert_named(err.value, repr(tensor), str(data_file), f"[{e.offset}, {e.offset + e.size})")
    # the other tensors are intact
    assert dr.load_checkpoint(str(prefix)).get_tensor("dtype/float32").shape == (2, 3)


def test_flipped_byte_in_partitioned_tensor_data(tmp_path):
    d = copy_fixture(tmp_path, "tf1_sharded")
    prefix = d / "model.ckpt-7"
    idx = dr.load_checkpoint(str(prefix)).index
    part = idx.slice_entry("part_rows", idx.entries["part_rows"].slices[1])
    data_file = idx.data_file(part.shard_id)
    flip(Path(data_file), part.offset + 5)
    with pytest.raises(dr.ChecksumMismatchError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor("part_rows")
    assert_named(err.value, "part_rows", data_file, f"[{part.offset}, {part.offset + part.size})")


def test_flipped_tensor_byte_tf_fails_too(tf, tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    e = entry_of(prefix, "dtype/float64")
    flip(d / "all.data-00000-of-00001", e.offset + 3)
    with pytest.raises(tf.errors.DataLossError, match="Checksum does not match"):
        tf_restore(tf, prefix, "dtype/float64", tf.float64)
    with pytest.raises(tf.errors.OpError):
        tf.train.load_checkpoint(str(prefix)).get_tensor("dtype/float64")
    with pytest.raises(ValueError):
        dr.load_checkpoint(str(prefix)).get_tensor("dtype/float64")


def test_string_tensor_with_corrupt_length_checksum(tmp_path, request):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    e = entry_of(prefix, "string/special")
    data_file = d / "all.data-00000-of-00001"
    # 5 one-byte varint lengths, then the 4-byte masked length checksum
    flip(data_file, e.offset + 5 + 1)
    with pytest.raises(dr.ChecksumMismatchError, match="length") as err:
        dr.load_checkpoint(str(prefix)).get_tensor("string/special")
    assert_named(err.value, "string/special", str(data_file))
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.DataLossError, match="length checksum"):
            tf_restore(tf, prefix, "string/special", tf.string)


def test_string_tensor_with_a_corrupt_length(tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    e = entry_of(prefix, "string/special")
    data_file = d / "all.data-00000-of-00001"
    flip(data_file, e.offset, 0x02)  # first length 5 -> 7: the lengths no longer add up
    with pytest.raises(ValueError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor("string/special")
    assert_named(err.value, "string/special", str(data_file))


def test_truncated_data_file(tmp_path, request):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    idx = dr.load_checkpoint(str(prefix)).index
    last = max(idx.entries.values(), key=lambda x: x.offset + x.size)
    data_file = d / "all.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[: last.offset + last.size // 2])
    with pytest.raises((OSError, ValueError)) as err:
        dr.load_checkpoint(str(prefix)).get_tensor(last.name)
    assert_named(err.value, str(data_file))
    assert "truncated" in str(err.value) or "shorter" in str(err.value)
    tf = _maybe_tf(request)
    if tf is not None:
        with pytest.raises(tf.errors.OutOfRangeError):
            tf_restore(tf, prefix, last.name, getattr(tf, last.dtype.name))


def test_truncated_data_file_names_the_tensor(tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")
    prefix = d / "all"
    e = entry_of(prefix, "special/bfloat16")
    data_file = d / "all.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[: e.offset + 2])
    with pytest.raises(OSError) as err:
        dr.load_checkpoint(str(prefix)).get_tensor("special/bfloat16")
    assert_named(err.value, str(data_file), "special/bfloat16")


def test_data_file_replaced_by_a_directory(tmp_path):
    d = copy_fixture(tmp_path, "all_dtypes")
    data_file = d / "all.data-00000-of-00001"
    data_file.unlink()
    data_file.mkdir()
    with pytest.raises(OSError) as err:
        dr.load_checkpoint(str(d / "all")).get_tensor("dtype/float32")
    assert_named(err.value, str(data_file))


def test_variant_with_corrupt_record(tmp_path):
    d = copy_fixture(tmp_path, "variant")
    prefix = d / "ckpt-1"
    name = "it/.ATTRIBUTES/ITERATOR_STATE"
    e = entry_of(prefix, name)
    data_file = d / "ckpt-1.data-00000-of-00001"
    flip(data_file, e.offset + 10)
    with pytest.raises(dr.ChecksumMismatchError) as err:
        dr.load_checkpoint(str(prefix)).get_variant_records(name)
    assert_named(err.value, name, str(data_file))


def _maybe_tf(request):
    try:
        return request.getfixturevalue("tf")
    except pytest.skip.Exception:
        return None
