"""``merge_checkpoints`` at its edges:

* ``delete_sources=True`` removes every data file of each source's own shard count that exists —
  also those no entry uses (``CheckpointIndex.data_files()`` lists only the used ones) — found by
  listing, so a hostile ``num_shards`` costs nothing; files of other shard counts are not the
  source's and stay; on local disk and on object stores;
* tensor names that are not UTF-8 (a hostile or foreign index; kept by the decoder with
  ``surrogateescape``) are carried through as the same bytes, as TF 2.21's ``MergeV2Checkpoints``
  does (differential test), and ``save_tensors`` writes such names back as the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import distrestore as dr
from distrestore.format import crc, dtypes, messages, sstable


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def test_delete_sources_removes_the_data_files_no_entry_uses(tmp_path):
    # three shards for two tensors: one data file holds nothing an entry names
    dr.save_tensors(str(tmp_path / "src" / "c"), {"t2": np.ones((2, 2)), "z": b"zz"}, num_shards=3)
    dr.save_tensors(str(tmp_path / "src" / "e"), {"w": np.arange(3.0)})
    used = {dr.open_checkpoint(str(tmp_path / "src" / "c")).data_file(i) for i in (0, 1, 2)}
    assert len(dr.open_checkpoint(str(tmp_path / "src" / "c")).data_files()) == 2 < len(used)
    (tmp_path / "src" / "c.data-00000-of-00007").write_bytes(b"not this bundle's")  # another count
    (tmp_path / "src" / "cc.data-00000-of-00003").write_bytes(b"another prefix")
    dest = str(tmp_path / "m")
    dr.merge_checkpoints([str(tmp_path / "src" / "c"), str(tmp_path / "src" / "e")], dest, delete_sources=True)
    assert sorted(os.listdir(tmp_path / "src")) == ["c.data-00000-of-00007", "cc.data-00000-of-00003"]
    np.testing.assert_array_equal(dr.load_variable(dest, "t2"), np.ones((2, 2)))
    assert dr.load_variable(dest, "z") == b"zz"


def _bundle(prefix: str, num_shards: int, items: list[tuple[bytes, np.ndarray]]) -> None:
    """A bundle whose index says ``num_shards`` (whatever files exist): every value in shard 0."""
    data, rows = b"", [(b"", messages.encode_header(num_shards))]
    for key, arr in sorted(items):
        raw = arr.tobytes()
        dt = dtypes.from_numpy(arr.dtype).enum
        rows.append((key, messages.encode_entry(dt, arr.shape, 0, len(data), len(raw), crc.mask(crc.value(raw)))))
        data += raw
    Path(f"{prefix}.data-00000-of-{num_shards:05d}").write_bytes(data)
    Path(f"{prefix}.index").write_bytes(sstable.build_table(rows))


def test_delete_sources_with_a_hostile_shard_count_lists_instead_of_naming(tmp_path):
    src = str(tmp_path / "h")
    n = 10**7  # names for every shard would take a minute and gigabytes
    _bundle(src, n, [(b"x", np.arange(4, dtype=np.int32))])
    Path(f"{src}.data-09999999-of-{n:05d}").write_bytes(b"unused")
    t0 = time.monotonic()
    dr.merge_checkpoints([src], str(tmp_path / "m"), delete_sources=True)
    assert time.monotonic() - t0 < 5  # (a correctness bound: it runs in milliseconds)
    assert sorted(os.listdir(tmp_path)) == [f"m.data-00000-of-{n:05d}", "m.index"]
    np.testing.assert_array_equal(dr.load_variable(str(tmp_path / "m"), "x"), np.arange(4, dtype=np.int32))


def test_delete_sources_on_an_object_store(remote, tmp_path):
    local = tmp_path / "c"
    dr.save_tensors(str(local), {"t2": np.ones((2, 2)), "z": b"zz"}, num_shards=3)
    (tmp_path / "c.data-00000-of-00007").write_bytes(b"another count")
    url, options = remote.upload(tmp_path)
    dest = f"{url}/merged/m"
    dr.merge_checkpoints([f"{url}/c"], dest, storage_options=options, delete_sources=True)
    fs = remote.store.fs
    fs.invalidate_cache()
    left = sorted(p.rsplit("/", 1)[-1] for p in fs.find(url))
    assert left == ["c.data-00000-of-00007", "m.data-00000-of-00003", "m.data-00001-of-00003", "m.index"]
    assert dr.restore_tensors(dest, storage_options=options)["z"] == b"zz"


# -- names that are not UTF-8 ---------------------------------------------------------------------

BAD = [b"bad\xffname", b"caf\xe9", b"ok"]
VALUES = [np.arange(3, dtype=np.float32), np.arange(4, dtype=np.int64), np.ones(2)]


def _save_bad_names(tf, prefix: str) -> None:
    """A bundle written by TF whose tensor names ``BAD`` are not all UTF-8."""
    tensors = [tf.constant(v) for v in VALUES]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=tf.constant(BAD), shape_and_slices=[""] * 3, tensors=tensors)


def _raw_table(prefix: str) -> dict[bytes, tuple]:
    rows = sstable.read_table(Path(prefix + ".index").read_bytes(), prefix)
    out = {}
    for key, raw in rows[1:]:
        e = messages.decode_entry(key.decode("latin-1"), raw)
        out[key] = (e.dtype, e.shape, e.shard_id, e.offset, e.size, e.crc32c, e.slices)
    return out


def test_merge_carries_names_that_are_not_utf8_as_tf_does(tf, tmp_path):
    from tensorflow.python.ops import gen_io_ops

    base = tmp_path / "base"
    base.mkdir()
    _save_bad_names(tf, str(base / "a"))
    for i, spec in enumerate(("4 0,2", "4 2,2")):  # one tensor with a non-UTF-8 name, in two slices
        tf.raw_ops.SaveV2(
            prefix=str(base / f"s{i}"),
            tensor_names=tf.constant([b"sl\xfeced"]),
            shape_and_slices=[spec],
            tensors=[tf.constant(np.arange(2 * i, 2 * i + 2, dtype=np.float32))],
        )
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(base, ours)
    shutil.copytree(base, theirs)
    names = ["a", "s0", "s1"]
    dr.merge_checkpoints([str(ours / n) for n in names], str(ours / "m"))
    gen_io_ops.merge_v2_checkpoints([str(theirs / n) for n in names], str(theirs / "m"), delete_old_dirs=False)
    assert _raw_table(str(ours / "m")) == _raw_table(str(theirs / "m"))
    assert set(_raw_table(str(ours / "m"))) >= set(BAD)
    (got,) = tf.raw_ops.RestoreV2(
        prefix=str(ours / "m"), tensor_names=tf.constant([b"sl\xfeced"]), shape_and_slices=[""], dtypes=[tf.float32]
    )
    np.testing.assert_array_equal(got.numpy(), np.arange(4, dtype=np.float32))
    out = dr.restore_tensors(str(ours / "m"))
    np.testing.assert_array_equal(out["bad\udcffname"], VALUES[0])
    np.testing.assert_array_equal(out["sl\udcfeced"], np.arange(4, dtype=np.float32))


def test_save_writes_names_read_from_an_index_back_as_the_same_bytes(tf, tmp_path):
    _save_bad_names(tf, str(tmp_path / "a"))
    restored = dr.restore_tensors(str(tmp_path / "a"))
    dr.save_tensors(str(tmp_path / "b"), restored)
    assert set(_raw_table(str(tmp_path / "b"))) == set(BAD)
    got = tf.raw_ops.RestoreV2(
        prefix=str(tmp_path / "b"),
        tensor_names=tf.constant(BAD),
        shape_and_slices=["", "", ""],
        dtypes=[tf.float32, tf.int64, tf.float64],
    )
    for g, v in zip(got, VALUES):
        np.testing.assert_array_equal(g.numpy(), v)
