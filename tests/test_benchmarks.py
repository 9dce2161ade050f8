"""The benchmark harness runs: ``python -m benchmarks --smoke`` builds a small version of every
workload, runs every contender once in its own process (TF, Ray, the object stores behind the
latency proxy, the restore service on a Ray cluster) and checks every restored tensor bit-exactly
against the hashes taken when it was built. Only correctness is asserted, never a time: the
ratios a smoke run prints mean nothing at these sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_benchmarks_changes_no_environment():
    code = (
        "import os, sys; before = dict(os.environ); path = list(sys.path); "
        "import benchmarks, benchmarks.cli, benchmarks.harness, benchmarks.groups.few_large, benchmarks.report; "
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
        "assert sys.path == path"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.timeout(120)
def test_a_capped_contender_is_timed_in_its_first_rounds_only(tmp_path):
    """The remote groups time the naive reader and TF's loop in fewer rounds than the ratio they
    judge: real children (the ``noop`` contender), interleaved, the capped one left out after
    its rounds, and the report says so."""
    from benchmarks import cli, report
    from benchmarks.harness import Runner

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "manifest.json").write_text("{}")
    runner = Runner(cli.parse(["--work", str(tmp_path), "--reps", "3", "--no-prime"]))
    g = runner.group("g", "w", [("a", "noop", {}), ("b", "noop", {"x": 1})], capped={"b": 1, "not in this group": 1})
    assert [r["n"] for r in (g["rows"]["a"], g["rows"]["b"])] == [3, 1]
    text = report.render(runner, "python -m benchmarks", time.time())
    # a label the group does not have is not named
    assert "Median of 3 interleaved rounds after one warm-up round (b: its first 1)" in text


@pytest.mark.timeout(900)
def test_smoke_run_checks_every_result(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ray")
    out = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the harness sets it for its children
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    report = out.read_text()
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Failures" not in report and "| failed |" not in report and "CHECK FAILED" not in done.stderr
    for workload in (
        "many_small",
        "partitioned",
        "remote: gcs",
        "remote: s3",
        "few_large",
        "memory",
        "restore service",
    ):
        assert f"## {workload}" in report, workload
    # every kind of contender ran and checked its tensors: TF's, distrestore's, the raw ceilings
    for label in ("TF get_tensor loop", "distrestore threads", "raw ceiling", "raw GET ceiling", "dr.list_variables"):
        assert any(line.startswith(f"| {label}") and "tensors checked" in line for line in report.splitlines()), label
    assert "bytes read / bytes needed" in report
    # a short run times nothing, so the service's rounds, like every group's, have no warm-up
    assert "after no warm-up (3 for small)" in report
    assert not (tmp_path / "work" / "few_large").exists()  # built checkpoints removed without --keep
