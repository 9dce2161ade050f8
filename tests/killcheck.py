"""Parent side of the kill-point tests: the child server of ``killpoints.py``, and what a reader
finds after each kill (``read_state``), for ``test_writes_atomic.py``."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import killpoints as kp
import numpy as np
import pytest

import distrestore as dr
from distrestore.storage import Storage

ROOT = Path(__file__).resolve().parent.parent


def start_child():
    """A generator for a fixture: yields ``run(**job) -> report`` for jobs of ``killpoints.py``
    (see its docstring), served by one child process that forks per job."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(Path(kp.__file__))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )

    def run(**job) -> dict:
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, f"the kill-point child did not answer {job}"
        line = proc.stdout.readline()
        assert line, f"the kill-point child exited (code {proc.poll()})"
        return json.loads(line)

    try:
        yield run
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- what a reader finds -----------------------------------------------------------------------


def same(got: dict, want: dict) -> bool:
    if set(got) != set(want):
        return False
    for name, value in want.items():
        a, b = np.asarray(got[name]), np.asarray(value)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if b.dtype == object:
            if [bytes(x) for x in a.ravel()] != [bytes(x) for x in b.ravel()]:
                return False
        elif a.tobytes() != b.tobytes():
            return False
    return True


def read_state(prefix: str, versions: dict[str, dict], *, tf=None, storage_options=None) -> str:
    """``"absent"`` when ``prefix`` has no index, else the key of the one entry of ``versions``
    ({key: tensors}) that it holds in full; fails the test on anything else."""
    try:
        verified = dr.restore_tensors(prefix, storage_options=storage_options)
    except dr.CheckpointNotFoundError as e:
        assert not Storage.for_url(prefix, storage_options).exists(prefix + ".index"), (
            f"an index names a missing file: {e}"
        )
        if tf is not None:
            with pytest.raises(tf.errors.NotFoundError):
                tf.train.load_checkpoint(prefix)
        return "absent"
    unverified = dr.restore_tensors(prefix, verify=False, storage_options=storage_options)
    for key, want in versions.items():
        if same(verified, want):
            assert same(unverified, want), f"{prefix}: unverified read differs from verified one"
            if tf is not None:
                reader = tf.train.load_checkpoint(prefix)
                assert same({name: reader.get_tensor(name) for name in want}, want), f"TF reads {prefix} otherwise"
            return key
    pytest.fail(f"{prefix} holds none of {sorted(versions)}: {sorted(verified)}")


def assert_in_order(outcomes: list[str], order: list[str]) -> None:
    """Outcomes only move forward through ``order`` (never back to an earlier state)."""
    ranks = [order.index(o) for o in outcomes]
    assert ranks == sorted(ranks), outcomes


def kill_at_every_step(child, job: dict, setup, check) -> tuple[list, list]:
    """Run ``job`` once to count its steps; then for every step k, ``setup()``, a SIGKILL before
    step k, and ``check()`` (returns an outcome). Returns the full run's steps and the outcomes,
    the last one after a run that completes."""
    setup()
    full = child(**job, at=None)
    assert full["status"] == "done", full
    kinds = [kind for kind, _ in full["steps"]]
    outcomes = []
    for k in range(1, len(kinds) + 1):
        setup()
        report = child(**job, at=k, mode="kill")
        assert report["status"] == "killed", (k, report)
        assert [kind for kind, _ in report["steps"]] == kinds[:k], "the steps are not deterministic"
        outcomes.append(check())
    setup()
    assert child(**job, at=None)["status"] == "done"
    outcomes.append(check())
    return full["steps"], outcomes


def debris(directory: Path, keep: set[str]) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f not in keep)


class MergeCase:
    """Three sources (2, 1 and 1 data files) in directories of their own under ``root``."""

    SHARDS = (2, 1, 1)

    def __init__(self, root: Path):
        self.root = root
        self.sources = [str(root / f"s{i}" / f"part{i}") for i in range(len(self.SHARDS))]
        self.merged = {k: v for i in range(len(self.SHARDS)) for k, v in kp.source_tensors(i).items()}

    def setup(self, dest_shards: int | None = None, dest: str | None = None) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for i, (src, n) in enumerate(zip(self.sources, self.SHARDS)):
            dr.save_tensors(src, kp.source_tensors(i), num_shards=n)
        if dest_shards is not None:
            dr.save_tensors(dest, kp.tensors(1), num_shards=dest_shards)

    def source_states(self, tf) -> list[str]:
        return [read_state(s, {"src": kp.source_tensors(i)}, tf=tf) for i, s in enumerate(self.sources)]
