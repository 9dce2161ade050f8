"""Writes that never lose data: ``save_tensors`` and ``merge_checkpoints`` killed with SIGKILL, or
failing with ENOSPC, at every step, on a local filesystem and on S3 (moto), then read back.

The write runs in a forked child of ``killpoints.py`` that counts its steps (calls of os.fsync,
os.replace, os.link, os.remove...; on S3 the PUT/POST/DELETE requests) and kills itself before
step k, for every k. After each kill, :func:`read_state` says what a reader finds: no index
("absent": distrestore raises CheckpointNotFoundError, TF NotFoundError), or one whole version,
identical through distrestore with and without CRC checks and through TF. Anything else — a mix,
a checksum error, a missing data file behind an index — fails the test. docs/writes.md states the
protocol these tests hold it to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import killpoints as kp
import numpy as np
import pytest
from killcheck import MergeCase, assert_in_order, debris, kill_at_every_step, read_state, start_child

import distrestore as dr


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def child():
    """``child(**job) -> report``: runs one job of ``killpoints.py`` (see its docstring)."""
    yield from start_child()


# -- save_tensors --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [1, 3])
def test_save_into_a_new_prefix_killed_at_every_step(child, tf, tmp_path, num_shards):
    prefix = str(tmp_path / "out" / "ckpt")
    new = kp.tensors(2)

    def setup():
        shutil.rmtree(tmp_path / "out", ignore_errors=True)

    def check():
        state = read_state(prefix, {"new": new}, tf=tf)
        if state == "absent" and (tmp_path / "out").exists():
            # what a kill leaves besides: temporary files, and data files no index names
            assert all(".tempstate" in f or ".data-" in f for f in os.listdir(tmp_path / "out"))
        return state

    job = {"op": "save", "prefix": prefix, "version": 2, "num_shards": num_shards}
    steps, outcomes = kill_at_every_step(child, job, setup, check)
    assert len(steps) >= 2 * num_shards + 4
    assert outcomes[0] == "absent" and outcomes[-1] == "new"
    assert_in_order(outcomes, ["absent", "new"])
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["ckpt.index"] + [f"ckpt.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    )


@pytest.mark.parametrize("old_shards,new_shards", [(2, 2), (1, 3), (3, 1)])
def test_save_over_an_existing_prefix_killed_at_every_step(child, tf, tmp_path, old_shards, new_shards):
    """Same shard count: the new data files take the old ones' names, so the old index goes first
    (old, then absent, then new). Another count: the old bundle stays whole until the new index
    replaces its index (old, then new, never absent); its data files are removed afterwards."""
    prefix = str(tmp_path / "ckpt")
    old, new = kp.tensors(1), kp.tensors(2)

    def setup():
        for f in os.listdir(tmp_path):
            os.remove(tmp_path / f)
        dr.save_tensors(prefix, old, num_shards=old_shards)

    job = {"op": "save", "prefix": prefix, "version": 2, "num_shards": new_shards}
    _, outcomes = kill_at_every_step(child, job, setup, lambda: read_state(prefix, {"old": old, "new": new}, tf=tf))
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    if old_shards == new_shards:
        assert "absent" in outcomes
        assert_in_order(outcomes, ["old", "absent", "new"])
    else:
        assert "absent" not in outcomes
        assert_in_order(outcomes, ["old", "new"])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["ckpt.index"] + [f"ckpt.data-{i:05d}-of-{new_shards:05d}" for i in range(new_shards)]
    )


def test_save_protocol_fsyncs_before_each_rename(child, tmp_path):
    """The order behind the guarantees across a power loss, not just a kill: every file is
    fsynced before its rename, the directory after the data renames and before the index
    rename, and again after it."""
    prefix = str(tmp_path / "ckpt")
    dr.save_tensors(prefix, kp.tensors(1), num_shards=2)
    report = child(op="save", prefix=prefix, version=2, num_shards=2, at=None)
    assert report["status"] == "done"
    d = tmp_path.name
    steps = [(kind, detail.replace(".tempstate", " tmp").split(" tmp")[0]) for kind, detail in report["steps"]]
    assert steps == [
        ("fsync", "ckpt.data-00000-of-00002"),  # written under a temporary name
        ("fsync", "ckpt.data-00001-of-00002"),
        ("remove", "ckpt.index"),  # same names as the old data files: the old index goes first
        ("fsync", d),
        ("replace", "ckpt.data-00000-of-00002"),
        ("replace", "ckpt.data-00001-of-00002"),
        ("fsync", d),
        ("fsync", "ckpt.index"),
        ("replace", "ckpt.index"),
        ("fsync", d),
    ], report["steps"]
    assert all(".tempstate" in detail.split()[0] for kind, detail in report["steps"] if kind == "replace")


def test_save_fails_at_every_step_and_cleans_up(child, tf, tmp_path):
    """An I/O error (ENOSPC) at any step: a StorageError naming the step and file, no temporary
    file left behind, and the old bundle whole, or (once its index had to go) absent."""
    prefix = str(tmp_path / "ckpt")
    old = kp.tensors(1)

    def setup():
        for f in os.listdir(tmp_path):
            os.remove(tmp_path / f)
        dr.save_tensors(prefix, old, num_shards=2)

    setup()
    n = len(child(op="save", prefix=prefix, version=2, num_shards=2, at=None)["steps"])
    outcomes = []
    for k in range(1, n + 1):
        setup()
        report = child(op="save", prefix=prefix, version=2, num_shards=2, at=k, mode="raise")
        assert report["status"] == "raised", (k, report)
        kind, message, named = report["error"]
        assert kind == "StorageError" and named and "No space left" in message, report["error"]
        state = read_state(prefix, {"old": old, "new": kp.tensors(2)}, tf=tf)
        assert debris(tmp_path, {"ckpt.index", "ckpt.data-00000-of-00002", "ckpt.data-00001-of-00002"}) == []
        outcomes.append(state)
    assert_in_order(outcomes, ["old", "absent", "new"])
    assert outcomes[-1] == "new"  # the last step is the directory's fsync after the commit


# -- merge_checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("delete_sources", [False, True])
def test_merge_killed_at_every_step(child, tf, tmp_path, delete_sources):
    case = MergeCase(tmp_path / "m")
    dest = str(tmp_path / "m" / "out" / "merged")

    def check():
        state = read_state(dest, {"merged": case.merged}, tf=tf)
        sources = case.source_states(tf)
        if state != "merged" or not delete_sources:
            assert sources == ["src"] * 3, (state, sources)
        return state, sources

    job = {"op": "merge", "sources": case.sources, "dest": dest, "delete_sources": delete_sources}
    steps, outcomes = kill_at_every_step(child, job, case.setup, check)
    states = [s for s, _ in outcomes]
    assert states[0] == "absent" and states[-1] == "merged"
    assert_in_order(states, ["absent", "merged"])
    assert sum(kind == "link" for kind, _ in steps) == 4  # hard links, not moves
    assert not any(
        kind in ("replace", "remove") and "part" in detail for kind, detail in steps[: states.index("merged")]
    )
    if delete_sources:
        assert outcomes[-1][1] == ["absent"] * 3
        for i in range(3):
            assert os.listdir(tmp_path / "m" / f"s{i}") == []  # the directories stay
    else:
        assert outcomes[-1][1] == ["src"] * 3


@pytest.mark.parametrize("dest_shards", [4, 1])
def test_merge_over_an_existing_bundle_killed_at_every_step(child, tf, tmp_path, dest_shards):
    """The destination holds another bundle: with the merged shard count (4) its index goes
    first; with another count it stays whole until the merged index replaces it."""
    case = MergeCase(tmp_path / "m")
    dest = str(tmp_path / "m" / "dest")

    def check():
        assert case.source_states(tf) == ["src"] * 3
        return read_state(dest, {"old": kp.tensors(1), "merged": case.merged}, tf=tf)

    job = {"op": "merge", "sources": case.sources, "dest": dest}
    _, outcomes = kill_at_every_step(child, job, lambda: case.setup(dest_shards, dest), check)
    assert outcomes[0] == "old" and outcomes[-1] == "merged"
    assert_in_order(outcomes, ["old", "absent", "merged"])
    assert ("absent" in outcomes) == (dest_shards == 4)
    assert sorted(f for f in os.listdir(tmp_path / "m") if f.startswith("dest")) == [
        *(f"dest.data-{i:05d}-of-00004" for i in range(4)),
        "dest.index",
    ]


def test_merge_into_one_of_its_sources_killed_at_every_step(child, tf, tmp_path):
    """TF allows the destination to be a source (TF 2.21 then deletes the index it just wrote).
    Here that source reads as itself until the merged index replaces its index, then as the merge."""
    case = MergeCase(tmp_path / "m")
    first = kp.source_tensors(0)

    def check():
        for i in (1, 2):
            assert read_state(case.sources[i], {"src": kp.source_tensors(i)}, tf=tf) == "src"
        return read_state(case.sources[0], {"itself": first, "merged": case.merged}, tf=tf)

    job = {"op": "merge", "sources": case.sources, "dest": case.sources[0]}
    _, outcomes = kill_at_every_step(child, job, case.setup, check)
    assert outcomes[0] == "itself" and outcomes[-1] == "merged"
    assert_in_order(outcomes, ["itself", "merged"])
    assert sorted(os.listdir(tmp_path / "m" / "s0")) == [
        *(f"part0.data-{i:05d}-of-00004" for i in range(4)),
        "part0.index",
    ]


def test_merge_fails_at_every_step_and_leaves_sources(child, tf, tmp_path):
    """ENOSPC at any step of a merge with ``delete_sources=True``: a StorageError, every source
    whole and nothing at the destination — unless the merge was already committed."""
    case = MergeCase(tmp_path / "m")
    dest = str(tmp_path / "m" / "out" / "merged")
    job = {"op": "merge", "sources": case.sources, "dest": dest, "delete_sources": True}
    case.setup()
    n = len(child(**job, at=None)["steps"])
    states = []
    for k in range(1, n + 1):
        case.setup()
        report = child(**job, at=k, mode="raise")
        assert report["status"] == "raised" and report["error"][0] == "StorageError", (k, report)
        state = read_state(dest, {"merged": case.merged}, tf=tf)
        if state == "absent":
            assert case.source_states(tf) == ["src"] * 3
            out = tmp_path / "m" / "out"
            assert not out.exists() or os.listdir(out) == [], k
        states.append(state)
    assert_in_order(states, ["absent", "merged"])
    assert "merged" in states


def test_merge_refuses_before_writing(tmp_path):
    """A conflict found late (in the last source) or a missing source data file: a named error,
    the sources as they were, nothing at the destination."""
    case = MergeCase(tmp_path / "m")
    case.setup()
    out = tmp_path / "out"
    dup = str(tmp_path / "dup" / "d")
    dr.save_tensors(dup, {"src0/a": np.zeros(2)})
    with pytest.raises(dr.MergeConflictError, match="src0/a"):
        dr.merge_checkpoints([*case.sources, dup], str(out / "m"))
    assert not out.exists() or os.listdir(out) == []
    os.remove(case.sources[1] + ".data-00000-of-00001")
    with pytest.raises(dr.CheckpointNotFoundError, match=r"part1\.data-00000-of-00001"):
        dr.merge_checkpoints(case.sources, str(out / "m"), delete_sources=True)
    assert os.listdir(out) == []
    for i in (0, 2):
        assert read_state(case.sources[i], {"src": kp.source_tensors(i)}) == "src"


def test_merge_of_a_bundle_into_itself_changes_nothing(tmp_path):
    prefix = str(tmp_path / "a")
    dr.save_tensors(prefix, kp.tensors(1), num_shards=2)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    assert dr.merge_checkpoints([prefix], prefix, delete_sources=True) == prefix
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before


def test_merge_across_filesystems_copies(tf, tmp_path):
    """Sources on another filesystem (/dev/shm, a tmpfs) than the destination: copied, not
    linked; the sources stay until ``delete_sources`` and only then go."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    shm = Path(tempfile.mkdtemp(prefix="distrestore-test-", dir="/dev/shm"))
    try:
        case = MergeCase(shm)
        case.setup()
        inodes = {os.stat(f).st_ino for s in case.sources for f in Path(s).parent.iterdir()}
        dest = str(tmp_path / "merged")
        dr.merge_checkpoints(case.sources, dest)
        assert read_state(dest, {"merged": case.merged}, tf=tf) == "merged"
        assert not inodes & {os.stat(f).st_ino for f in tmp_path.iterdir()}
        assert case.source_states(tf) == ["src"] * 3
        dr.merge_checkpoints(case.sources, dest, delete_sources=True)
        assert read_state(dest, {"merged": case.merged}, tf=tf) == "merged"
        assert [os.listdir(Path(s).parent) for s in case.sources] == [[], [], []]
    finally:
        shutil.rmtree(shm, ignore_errors=True)


# -- object stores -----------------------------------------------------------------------------------


def test_save_and_merge_on_object_stores(remote, tmp_path):
    """Every backend: overwrite with another and the same shard count (no stale objects left),
    merge within the store (server-side copies), from local disk into it and out of it."""
    store, opts = remote.store, remote.storage_options
    base = store.url(f"writes-{uuid.uuid4().hex[:8]}")
    prefix = base + "/ckpt"

    def objects(under: str) -> list[str]:
        store.fs.invalidate_cache()
        return sorted(p.rsplit("/", 1)[-1] for p in store.fs.find(under))

    dr.save_tensors(prefix, kp.tensors(1), num_shards=2, storage_options=opts)
    assert read_state(prefix, {"v1": kp.tensors(1)}, storage_options=opts) == "v1"
    dr.save_tensors(prefix, kp.tensors(2), num_shards=3, storage_options=opts)
    dr.save_tensors(prefix, kp.tensors(3), num_shards=3, storage_options=opts)
    assert read_state(prefix, {"v3": kp.tensors(3)}, storage_options=opts) == "v3"
    assert objects(base) == [
        "ckpt.data-00000-of-00003",
        "ckpt.data-00001-of-00003",
        "ckpt.data-00002-of-00003",
        "ckpt.index",
    ]

    case = MergeCase(tmp_path / "local")
    case.setup()
    remote_sources = [f"{base}/s{i}/part{i}" for i in range(3)]
    for i, src in enumerate(remote_sources):
        dr.save_tensors(src, kp.source_tensors(i), num_shards=MergeCase.SHARDS[i], storage_options=opts)
    dr.merge_checkpoints(case.sources, base + "/from_local", storage_options=opts)
    assert read_state(base + "/from_local", {"merged": case.merged}, storage_options=opts) == "merged"
    local_dest = str(tmp_path / "from_remote" / "m")
    dr.merge_checkpoints(remote_sources, local_dest, storage_options=opts)
    assert read_state(local_dest, {"merged": case.merged}) == "merged"
    dr.merge_checkpoints(remote_sources, base + "/within", delete_sources=True, storage_options=opts)
    assert read_state(base + "/within", {"merged": case.merged}, storage_options=opts) == "merged"
    for i in range(3):
        assert objects(f"{base}/s{i}") == []
    assert case.source_states(None) == ["src"] * 3


def _s3_rm(s3, url: str) -> None:
    s3.fs.invalidate_cache()
    if s3.fs.exists(url):
        s3.fs.rm(url, recursive=True)
    s3.fs.invalidate_cache()


@pytest.mark.parametrize("old_shards", [None, 2, 1])
def test_save_on_s3_killed_at_every_request(child, s3_server, old_shards):
    """Object stores: data objects first, the index last, each a single atomic PUT. Over a bundle
    with the same shard count its index is deleted first (old, absent, new); otherwise the old
    bundle stays whole until the new index's PUT (old, new)."""
    opts = dict(s3_server.storage_options, use_listings_cache=False)
    base = s3_server.url(f"kill-{uuid.uuid4().hex[:8]}")
    prefix = base + "/ckpt"
    old, new = kp.tensors(1), kp.tensors(2)

    def setup():
        _s3_rm(s3_server, base)
        if old_shards:
            dr.save_tensors(prefix, old, num_shards=old_shards, storage_options=opts)

    job = {"op": "save", "prefix": prefix, "version": 2, "num_shards": 2, "hook": "s3", "storage_options": opts}
    steps, outcomes = kill_at_every_step(
        child, job, setup, lambda: read_state(prefix, {"old": old, "new": new}, storage_options=opts)
    )
    data = [["PUT", "ckpt.data-00000-of-00002"], ["PUT", "ckpt.data-00001-of-00002"], ["PUT", "ckpt.index"]]
    assert (
        steps
        == {
            None: data,
            2: [["DELETE", "ckpt.index"], *data],  # the old index names the same objects: it goes first
            1: [*data, ["DELETE", "ckpt.data-00000-of-00001"]],  # the old bundle's data, no longer named
        }[old_shards]
    )
    assert outcomes[-1] == "new"
    assert outcomes[0] == ("old" if old_shards else "absent")
    assert_in_order(outcomes, ["old", "absent", "new"])
    assert ("absent" in outcomes) == (old_shards in (None, 2))
    _s3_rm(s3_server, base)


def test_merge_on_s3_killed_at_every_request(child, s3_server):
    opts = dict(s3_server.storage_options, use_listings_cache=False)
    base = s3_server.url(f"kill-{uuid.uuid4().hex[:8]}")
    sources = [f"{base}/s{i}/part{i}" for i in range(3)]
    merged = {k: v for i in range(3) for k, v in kp.source_tensors(i).items()}
    dest = base + "/out/merged"

    def setup():
        _s3_rm(s3_server, base)
        for i, src in enumerate(sources):
            dr.save_tensors(src, kp.source_tensors(i), num_shards=MergeCase.SHARDS[i], storage_options=opts)

    def check():
        state = read_state(dest, {"merged": merged}, storage_options=opts)
        srcs = [read_state(s, {"src": kp.source_tensors(i)}, storage_options=opts) for i, s in enumerate(sources)]
        if state != "merged":
            assert srcs == ["src"] * 3
        return state, srcs

    job = {
        "op": "merge",
        "sources": sources,
        "dest": dest,
        "delete_sources": True,
        "hook": "s3",
        "storage_options": opts,
    }
    steps, outcomes = kill_at_every_step(child, job, setup, check)
    states = [s for s, _ in outcomes]
    assert states[0] == "absent" and states[-1] == "merged"
    assert_in_order(states, ["absent", "merged"])
    assert outcomes[-1][1] == ["absent"] * 3
    # server-side copies (the sources stay), the index, and only then the sources' deletion
    assert steps[:5] == [["PUT", f"merged.data-{i:05d}-of-00004"] for i in range(4)] + [["PUT", "merged.index"]]
    assert {kind for kind, _ in steps[5:]} == {"DELETE"} and len(steps) == 5 + 3 + 4
    _s3_rm(s3_server, base)
