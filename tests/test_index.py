"""The checkpoint index (``distrestore.index``): the bundle header's version checks, the entry
table's lookups, and resolving a directory through its ``checkpoint`` state file like TF."""

from __future__ import annotations

import os

import numpy as np
import pytest
from format_support import tensorflow_or_skip

import distrestore as dr
from distrestore.errors import CorruptCheckpointError, TensorNotFoundError, UnsupportedCheckpointError
from distrestore.format import messages, sstable
from distrestore.format.slices import slice_key
from distrestore.format.wire import LENGTH, VARINT, encode_varint, field
from distrestore.index import CheckpointIndex, open_checkpoint

# -- the header's versions -------------------------------------------------------------------------


def _index_with_header(version: bytes) -> bytes:
    return sstable.build_table(
        [(b"", field(1, VARINT, 1) + field(3, LENGTH, version)), (b"t", messages.encode_entry(1, [1], 0, 0, 4, 0))]
    )


@pytest.mark.parametrize(
    "version, message",
    [
        (field(1, VARINT, -1), "producer"),
        (field(1, VARINT, 1) + field(2, VARINT, 2), "reader version 2"),
        (field(1, VARINT, 1) + field(3, VARINT, 0) + field(3, VARINT, 1), "disallows"),
        (field(1, VARINT, 1) + field(3, LENGTH, encode_varint(5) + encode_varint(1)), "disallows"),  # packed
    ],
)
def test_header_version_checks(version, message):
    with pytest.raises(UnsupportedCheckpointError, match=message) as e:
        CheckpointIndex.from_bytes("/some/ckpt", _index_with_header(version))
    assert "/some/ckpt.index" in str(e.value)


@pytest.mark.parametrize(
    "version",
    [
        field(1, VARINT, 1),
        field(1, VARINT, 0) + field(2, VARINT, 1),
        field(1, VARINT, 7) + field(2, VARINT, 0) + field(3, VARINT, 0) + field(3, VARINT, 2),
    ],
)
def test_header_versions_accepted(version):
    idx = CheckpointIndex.from_bytes("/some/ckpt", _index_with_header(version))
    assert list(idx.entries) == ["t"]


def test_state_relative_and_absolute_paths_joined_like_tf(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    absolute = str(tmp_path / "elsewhere" / "model.ckpt-7")
    (d / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-2"\n'
        f'all_model_checkpoint_paths: "{absolute}"\n'
        f'all_model_checkpoint_paths: "sub/ckpt-1"\n'
        f'all_model_checkpoint_paths: "ckpt-2"\n'
    )
    s = dr.get_checkpoint_state(str(d))
    assert s.model_checkpoint_path == os.path.join(str(d), "ckpt-2")
    assert s.all_model_checkpoint_paths == [
        absolute,
        os.path.join(str(d), "sub/ckpt-1"),
        os.path.join(str(d), "ckpt-2"),
    ]
    try:
        tf = tensorflow_or_skip()
    except pytest.skip.Exception:
        return
    theirs = tf.train.get_checkpoint_state(str(d))
    assert s.model_checkpoint_path == theirs.model_checkpoint_path
    assert s.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)


def test_state_missing_file_and_empty_latest(tmp_path):
    assert dr.get_checkpoint_state(str(tmp_path)) is None
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "x"\n')
    with pytest.raises(ValueError, match="Invalid checkpoint state"):  # TF raises ValueError too
        dr.get_checkpoint_state(str(tmp_path))


def test_state_custom_latest_filename(tmp_path):
    (tmp_path / "my_state").write_text('model_checkpoint_path: "a"\n')
    assert dr.get_checkpoint_state(str(tmp_path)) is None
    s = dr.get_checkpoint_state(str(tmp_path), "my_state")
    assert s.model_checkpoint_path == os.path.join(str(tmp_path), "a")


# -- lookups -------------------------------------------------------------------------------------


def test_lookups_name_the_tensor_and_the_shard(tmp_path):
    part = np.arange(12, dtype=np.float32).reshape(4, 3)
    prefix = dr.save_tensors(str(tmp_path / "ckpt"), {"a": part, "b": np.int64(3)}, num_shards=2)
    idx = open_checkpoint(prefix)
    assert idx.entry("a").shape == (4, 3) and idx.has_tensor("b") and not idx.has_tensor("c")
    with pytest.raises(TensorNotFoundError, match="Key c not found"):
        idx.entry("c")
    assert idx.data_files() == [f"{prefix}.data-00000-of-00002", f"{prefix}.data-00001-of-00002"]
    with pytest.raises(CorruptCheckpointError, match="shard id 5 out of range"):
        idx.data_file(5)
    assert idx.shape_map() == {"a": [4, 3], "b": []}
    assert idx.dtype_map() == {"a": np.float32, "b": np.int64}
    assert idx.raw_slice_entries() == {}  # nothing partitioned


def test_raw_slice_entries_are_the_hidden_slice_entries_read_only():
    ext = ((0, 2), (0, -1))
    items = {
        b"": messages.encode_header(1),
        b"p": messages.encode_entry(1, (4, 3), slices=[ext]),
        slice_key("p", ext): messages.encode_entry(1, (2, 3), 0, 0, 24, 0),
    }
    idx = CheckpointIndex.from_bytes("/mem/ckpt", sstable.build_table(sorted(items.items())))
    raw = idx.raw_slice_entries()
    assert dict(raw) == {slice_key("p", ext): items[slice_key("p", ext)]}
    with pytest.raises(TypeError):
        raw[b"x"] = b""  # a view: the index's own entries cannot be changed through it
    assert idx.slice_entry("p", ext).shape == (2, 3)
