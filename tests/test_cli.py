"""The command line, run in-process through ``distrestore.cli.main``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import distrestore as dr
from distrestore.cli import main


def test_demo_restores_and_checks(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "every value bit-exact" in out and "ReadPlan:" in out


def test_demo_with_the_ray_executor(ray_local, capsys):
    assert main(["demo", "--executor", "ray"]) == 0
    assert "executor=ray; every value bit-exact" in capsys.readouterr().out


def test_ls_tree_plan_restore(fixtures_dir, tmp_path, capsys):
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    assert main(["ls", prefix]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [n for n, _ in dr.list_variables(prefix)]
    assert "part_rows\tfloat32\t[10, 3]" in lines

    assert main(["tree", str(fixtures_dir / "tf1_adam")]) == 0
    assert "slot 'm' for (root).net.w" in capsys.readouterr().out

    assert main(["plan", prefix, "--names", "part_rows", "part_cols"]) == 0
    assert capsys.readouterr().out.startswith("ReadPlan: 2 outputs")

    out_file = tmp_path / "t.npz"
    assert main(["restore", prefix, "--output", str(out_file)]) == 0
    saved = np.load(out_file)
    np.testing.assert_array_equal(saved["part_rows"], dr.load_variable(prefix, "part_rows"))


def test_storage_options_are_json(fixtures_dir, capsys):
    prefix = str(fixtures_dir / "manager")
    assert main(["ls", prefix, "--storage-options", json.dumps({})]) == 0
    assert capsys.readouterr().out


def test_module_entry_point_fails_cleanly_on_missing_checkpoint(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "distrestore", "ls", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert run.returncode != 0 and "CheckpointNotFoundError" in run.stderr
