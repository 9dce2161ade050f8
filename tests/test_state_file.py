"""Paths in a ``checkpoint`` state file stay inside the directory's filesystem and bucket.

Local directories: differential against TF 2.21's ``get_checkpoint_state``/``latest_checkpoint``/
``load_checkpoint`` (``os.path.isabs`` keeps a path, anything else, URLs included, is joined to the
directory). Buckets (moto): a path into another bucket or filesystem is never followed — no
request leaves the bucket; ``latest_checkpoint`` finds nothing (as TF would), opening the
directory raises ``CheckpointPathError`` (a ``ValueError``, TF's error kind) naming the path.
"""

from __future__ import annotations

import shutil

import pytest

import distrestore as dr
from distrestore.errors import CheckpointPathError, DistRestoreError
from distrestore.storage import Storage
from distrestore.storage.wrappers import CountingStorage

TENSORS = {"w": [1.0, 2.0, 3.0]}


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _state(path, model: str, others=()) -> None:
    lines = [f'model_checkpoint_path: "{model}"'] + [f'all_model_checkpoint_paths: "{p}"' for p in (*others, model)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def tree(tmp_path):
    """``d/`` with a checkpoint ``d/ckpt-1``, a sibling checkpoint ``other/ckpt-9`` and ``d/sub/``."""
    import numpy as np

    d = tmp_path / "d"
    dr.save_tensors(str(d / "ckpt-1"), {"w": np.array(TENSORS["w"], np.float32)})
    dr.save_tensors(str(tmp_path / "other" / "ckpt-9"), {"w": np.array([9.0], np.float32)})
    (d / "sub").mkdir()
    return tmp_path


def _entries(root) -> list[str]:
    d = root / "d"
    return [
        "ckpt-1",  # relative
        str(d / "ckpt-1"),  # absolute, inside
        str(root / "other" / "ckpt-9"),  # absolute, elsewhere on the same filesystem (TF1's Saver writes these)
        "../other/ckpt-9",  # relative, climbing out
        "sub/../ckpt-1",
        f"file://{d / 'ckpt-1'}",  # TF joins a URL to the directory: nothing there
        "s3://other-bucket/ckpt-9",
        "gs://b/x",
        "missing-7",
    ]


@pytest.mark.parametrize("i", range(9))
def test_local_state_file_resolves_like_tf(tf, tree, i):
    d = tree / "d"
    entry = _entries(tree)[i]
    _state(d / "checkpoint", entry, others=["ckpt-1"])
    theirs = tf.train.get_checkpoint_state(str(d))
    ours = dr.get_checkpoint_state(str(d))
    assert ours.model_checkpoint_path == theirs.model_checkpoint_path
    assert ours.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)
    assert dr.latest_checkpoint(str(d)) == tf.train.latest_checkpoint(str(d))
    try:
        want = tf.train.load_checkpoint(str(d)).get_tensor("w").tolist()
    except ValueError:
        want = ValueError
    if want is ValueError:
        with pytest.raises(ValueError) as info:
            dr.load_checkpoint(str(d))
        assert isinstance(info.value, DistRestoreError)
    else:
        assert dr.load_checkpoint(str(d)).get_tensor("w").tolist() == want


# -- buckets ---------------------------------------------------------------------------------------


@pytest.fixture
def bucket_tree(s3_server, tmp_path):
    """A checkpoint directory in the session bucket, a real checkpoint in another bucket (so that
    following a path there would succeed) and a local one."""
    import numpy as np

    src = tmp_path / "src"
    dr.save_tensors(str(src / "ckpt-1"), {"w": np.array(TENSORS["w"], np.float32)})
    url = s3_server.upload(src)
    other = f"distrestore-other-{url.rsplit('-', 1)[-1]}"
    s3_server.fs.mkdir(other)
    for f in src.iterdir():
        s3_server.fs.pipe_file(f"{other}/x/{f.name}", f.read_bytes())
    s3_server.fs.invalidate_cache()
    local = tmp_path / "local"
    shutil.copytree(src, local)
    return url, other, local, s3_server


@pytest.mark.parametrize(
    "kind", ["other-bucket-url", "other-bucket-path", "file-url", "other-scheme", "local-absolute"]
)
def test_bucket_state_file_never_leaves_the_bucket(bucket_tree, kind):
    url, other, local, s3 = bucket_tree
    entry = {
        "other-bucket-url": f"s3://{other}/x/ckpt-1",
        "other-bucket-path": f"/{other}/x/ckpt-1",  # s3fs would read this as bucket/key
        "file-url": f"file://{local}/ckpt-1",
        "other-scheme": f"gs://{other}/x/ckpt-1",
        "local-absolute": f"{local}/ckpt-1",  # TF would read the local disk
    }[kind]
    s3.put(f"{url}/checkpoint", f'model_checkpoint_path: "{entry}"\n'.encode())
    storage = CountingStorage(Storage.for_url(url, s3.storage_options))
    assert dr.latest_checkpoint(url, storage=storage) is None
    with pytest.raises(CheckpointPathError) as info:
        dr.open_checkpoint(url, storage=storage)
    assert isinstance(info.value, ValueError) and entry in str(info.value)
    with pytest.raises(CheckpointPathError):
        dr.restore_tensors(url, storage_options=s3.storage_options)
    touched = [r[0] for r in storage.requests]
    assert touched and all(t.startswith(url) for t in touched), touched
    state = dr.get_checkpoint_state(url, storage=storage)
    if "://" in entry:  # TF's join: a name inside the directory
        assert state.model_checkpoint_path == f"{url}/{entry}"
    else:  # TF keeps an absolute path (for the local disk); it is never looked up in the bucket
        assert state.model_checkpoint_path == entry


def test_bucket_state_file_with_same_bucket_url_is_followed(bucket_tree):
    url, _, _, s3 = bucket_tree
    s3.put(f"{url}/checkpoint", f'model_checkpoint_path: "{url}/ckpt-1"\n'.encode())
    assert dr.latest_checkpoint(url, storage_options=s3.storage_options) == f"{url}/ckpt-1"
    assert dr.restore_tensors(url, storage_options=s3.storage_options)["w"].tolist() == TENSORS["w"]
