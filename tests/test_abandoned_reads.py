"""Reads the thread executor leaves behind at a deadline (a local read cannot be cut):

* they do not hold the interpreter's exit: a process whose restore failed at its deadline while
  reads slower than the test's patience were still running exits at once (its read threads are
  daemon threads);
* they never write into an array that was handed out: a streaming restore's consumer keeps the
  arrays it got before the deadline, and after the abandoned reads end those arrays still hold
  the checkpoint's values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from checks import load_expected
from test_remote import check_values

import distrestore as dr
from distrestore.errors import DeadlineExceededError
from distrestore.storage.wrappers import LatencyStorage

ROOT = Path(__file__).resolve().parents[1]
SLOW = 120.0  # seconds each abandoned read takes: far beyond what the test waits


def test_abandoned_reads_do_not_delay_the_interpreter_exit(fixtures_dir):
    prefix, _ = load_expected(fixtures_dir, "tf1_sharded")
    script = textwrap.dedent(
        f"""
        import threading, time
        import distrestore as dr
        from distrestore.storage.wrappers import LatencyStorage

        storage = LatencyStorage(latency=0.0)
        index = dr.open_checkpoint({prefix!r}, storage=storage)
        storage.latency = {SLOW}  # every data read now takes {SLOW} s
        try:
            dr.restore_tensors(index, deadline=0.5)
        except dr.DeadlineExceededError:
            left = [t for t in threading.enumerate() if t.name.startswith("distrestore-read")]
            print("deadline", len(left), all(t.daemon for t in left), flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=SLOW)
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stderr
    words = run.stdout.split()
    assert words[0] == "deadline" and int(words[1]) >= 1 and words[2] == "True", run.stdout  # reads left behind
    # imports and the restore take a few seconds; waiting for the reads would take SLOW
    assert elapsed < SLOW / 4, f"the process took {elapsed:.1f} s to exit"


class SlowShard(LatencyStorage):
    """Delays the read attempts of one data file only."""

    def __init__(self, inner=None, latency=0.0, slow=""):
        super().__init__(inner, latency)
        self.slow = slow

    def params(self) -> dict:
        return {**super().params(), "slow": self.slow}

    def before_attempt(self, url, start, views):
        if self.slow and self.slow in url:
            super().before_attempt(url, start, views)


def test_a_read_left_behind_never_writes_into_a_handed_out_array(fixtures_dir):
    prefix, exp = load_expected(fixtures_dir, "tf1_sharded")
    storage = SlowShard(latency=3.0)
    index = dr.open_checkpoint(prefix, storage=storage)
    dr.restore_tensors(index)  # the index learns its files' sizes: what is slow now is the reads
    storage.slow = "data-00002"
    got: dict[str, np.ndarray] = {}
    with pytest.raises(DeadlineExceededError, match="data-00002"):
        for name, arr in dr.iter_restore_tensors(index, deadline=1.0, max_inflight_bytes=1 << 20):
            got[name] = arr
    assert got, "nothing arrived before the deadline: the test shows nothing"
    copies = {k: v.copy() for k, v in got.items()}
    end = time.monotonic() + 30  # the abandoned reads end by themselves, writing what they read
    while any(t.name.startswith("distrestore-read") for t in threading.enumerate()):
        assert time.monotonic() < end, "abandoned reads never finished"
        time.sleep(0.05)
    for k, v in got.items():
        assert v.tobytes() == copies[k].tobytes(), k
    check_values(got, {k: exp["tensors"][k] for k in got}, "arrays handed out before the deadline")
