"""The command line end to end: every command, every exit code, one-line errors, ``--json``,
storage options, the progress bar and summary, and ``python -m distrestore`` as a process
(``.npz``/``.safetensors`` output and ``convert``: ``test_export.py``).

Most tests run ``distrestore.cli.main`` in-process (capsys); the ones about the process itself
(exit status, stderr, a terminal) run ``python -m distrestore``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from checks import assert_one_line_error

import distrestore as dr
from distrestore.cli import COMMANDS, main
from distrestore.cli.common import key_value

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(kw.pop("env", {}))
    if "stdout" not in kw and "stderr" not in kw:
        kw["capture_output"] = True
    kw.setdefault("text", True)
    return subprocess.run([sys.executable, "-m", "distrestore", *map(str, args)], env=env, **kw)


@pytest.fixture
def sharded(fixtures_dir):
    return str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")


# -- help and the command table -----------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_plain_text(command, capsys):
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: distrestore")
    assert "``" not in out and ":func:" not in out and ":class:" not in out
    if command is None:
        assert all(name in out for name in COMMANDS) and "Exit codes" in out


def test_help_examples_run_in_the_readme(capsys):
    """The examples of ``distrestore --help`` are lines of the README's command-line block, which
    ``test_readme.py`` runs against real checkpoints."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 3
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Command line", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    for line in examples:
        assert line.strip().replace("distrestore ", "python -m distrestore ", 1) in block, line


def test_names_that_are_not_utf8_print_as_their_bytes(tmp_path):
    from distrestore.format import crc, messages, sstable

    raw = np.arange(3, dtype=np.float32).tobytes()
    entry = messages.encode_entry(1, (3,), 0, 0, len(raw), crc.mask(crc.value(raw)))
    (tmp_path / "m.data-00000-of-00001").write_bytes(raw)
    index = sstable.build_table([(b"", messages.encode_header(1)), (b"bad\xffname", entry)])
    (tmp_path / "m.index").write_bytes(index)
    prefix = str(tmp_path / "m")
    utf8 = run_cli("ls", prefix, env={"PYTHONIOENCODING": "utf-8"}, capture_output=True, text=False)
    assert utf8.returncode == 0, utf8.stderr
    assert utf8.stdout.startswith(b"bad\xffname\tfloat32\t[3]")  # the name's own bytes
    ascii_ = run_cli("tree", prefix, env={"PYTHONIOENCODING": "ascii"})
    assert ascii_.returncode == 0 and "bad\\udcffname" in ascii_.stdout, ascii_.stderr
    listed = run_cli("ls", prefix, "--json")
    assert json.loads(listed.stdout)[0]["name"] == "bad\udcffname"
    by_bytes = run_cli("restore", prefix, "--names", "bad\udcffname", "--no-progress")  # argv: the same bytes
    assert by_bytes.returncode == 0 and "restored 1 tensors" in by_bytes.stdout, by_bytes.stderr


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert_one_line_error(capsys.readouterr().err, "distrestore: error:")


# -- demo ---------------------------------------------------------------------------------------


def test_demo_restores_and_checks(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "every value bit-exact" in out and "ReadPlan:" in out


def test_demo_with_the_ray_executor(ray_local, capsys):
    assert main(["demo", "--executor", "ray"]) == 0
    assert "executor=ray; every value bit-exact" in capsys.readouterr().out


# -- ls -----------------------------------------------------------------------------------------


def test_ls_lines(sharded, capsys):
    assert main(["ls", sharded]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [n for n, _ in dr.list_variables(sharded)]
    row = next(line.split("\t") for line in lines if line.startswith("part_rows\t"))
    assert row[1:3] == ["float32", "[10, 3]"] and int(row[3]) == 10 * 3 * 4


def test_ls_json(sharded, capsys):
    assert main(["ls", sharded, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    index = dr.open_checkpoint(sharded)
    assert set(rows) == set(index.entries)
    for name, r in rows.items():
        e = index.entries[name]
        assert (r["dtype"], r["shape"]) == (e.dtype.name, list(e.shape))
        assert set(r) == {"name", "dtype", "shape", "bytes", "data_files", "slices"}
        assert all(f.startswith("model.ckpt-7.data-") and (Path(sharded).parent / f).is_file() for f in r["data_files"])
    part = rows["big/part5"]
    assert part["slices"] == 5 and part["bytes"] == 100 * 8 * 4
    plain = rows["scope1/w"]
    assert plain["slices"] == 0 and len(plain["data_files"]) == 1
    assert plain["bytes"] == index.entries["scope1/w"].size


# -- tree ---------------------------------------------------------------------------------------


def test_tree_tf2_paths_follow_load_object_tree(fixtures_dir, capsys):
    ckpt = str(fixtures_dir / "tf2_keras" / "model_only")
    assert main(["tree", ckpt]) == 0
    out = capsys.readouterr().out
    assert "            ├── [1]  sequential/dense\n" in out
    tree = dr.load_object_tree(ckpt)
    line = next(x for x in out.splitlines() if "._kernel  float32[4, 8]" in x)
    assert line.endswith("sequential/dense/kernel")
    assert tree.model._functional._operations[1]._kernel.shape == (4, 8)


def test_tree_tf1_adam_slots_and_tf1_scopes(fixtures_dir, sharded, capsys):
    assert main(["tree", str(fixtures_dir / "tf1_adam")]) == 0
    assert "slot 'm' of .net.w  float32[3, 2]  w/Adam" in capsys.readouterr().out
    assert main(["tree", sharded]) == 0
    out = capsys.readouterr().out
    assert out.startswith("(no object graph") and "scope2/\n  nested/\n" in out and "    flag  bool[3]" in out


# -- plan ---------------------------------------------------------------------------------------


def test_plan_defaults_and_workers(sharded, capsys):
    assert main(["plan", sharded, "--names", "part_rows", "part_cols"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("plan for ") and "threads executor's default for local files" in out[0]
    assert out[1].startswith("ReadPlan: 2 outputs")
    assert main(["plan", sharded, "--executor", "ray", "--workers", "3", "--regex", "^part_"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "plan for 3 concurrent reads (--workers 3), executor=ray"
    assert "per worker (3)" in "\n".join(out)


def test_plan_never_needs_ray(sharded, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray fails: nothing may need it
    assert main(["plan", sharded, "--executor", "ray", "--workers", "16"]) == 0
    capsys.readouterr()
    assert main(["plan", sharded, "--executor", "ray"]) == 2  # its size is the cluster's: say so
    assert_one_line_error(capsys.readouterr().err, "pass --workers N")


# -- restore ------------------------------------------------------------------------------------


def test_restore_summary_line(sharded, capsys):
    assert main(["restore", sharded, "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(
        r"restored 13 tensors, [\d.]+ k?B in [\d.]+ s \([\d.]+ [kMG]?B/s\), executor=threads, every CRC32C checked",
        out,
    ), out


def test_verify_only_checks_every_crc_including_variants(fixtures_dir, capsys):
    assert main(["restore", str(fixtures_dir / "variant"), "--verify-only", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("verified 3 tensors") and "checked 1 variant tensors" in captured.err


def test_verify_only_fails_on_a_flipped_byte(fixtures_dir, tmp_path, capsys):
    src = fixtures_dir / "tf1_sharded"
    shutil.copytree(src, tmp_path / "c")
    data = tmp_path / "c" / "model.ckpt-7.data-00003-of-00004"  # big/part5's slices
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    assert main(["restore", str(tmp_path / "c"), "--verify-only", "--no-progress"]) == 1
    assert_one_line_error(
        capsys.readouterr().err, "distrestore restore: ChecksumMismatchError", "big/part5", "data-00003"
    )
    # verify=False reads the same bytes without checking them
    assert main(["restore", str(tmp_path / "c"), "--no-verify", "--no-progress"]) == 0


def test_verify_only_refuses_output(sharded, tmp_path, capsys):
    assert main(["restore", sharded, "--verify-only", "--output", str(tmp_path / "x.npz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "--verify-only")


# -- merge --------------------------------------------------------------------------------------


def test_merge(tmp_path, capsys):
    a = dr.save_tensors(str(tmp_path / "a" / "a"), {"x": np.arange(3, dtype=np.int32)})
    b = dr.save_tensors(str(tmp_path / "b" / "b"), {"y": np.float64(2.5)})
    dest = str(tmp_path / "m" / "merged")
    assert main(["merge", a, b, dest]) == 0
    assert f"into {dest}" in capsys.readouterr().out
    assert dr.restore_tensors(dest)["x"].tolist() == [0, 1, 2]
    c = dr.save_tensors(str(tmp_path / "c" / "c"), {"x": np.float32(1)})
    d = dr.save_tensors(str(tmp_path / "d" / "d"), {"x": np.float32(2)})
    assert main(["merge", c, d, str(tmp_path / "m2" / "m")]) == 1  # the same name twice
    assert_one_line_error(capsys.readouterr().err, "MergeConflictError", "x")


# -- exit codes and one-line errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,code,fragments",
    [
        (["ls", "{tmp}/nope"], 2, ["CheckpointNotFoundError", "nope"]),
        (["restore", "{sharded}", "--names", "nope"], 2, ["TensorNotFoundError", "'nope'"]),
        (["restore", "{sharded}", "--regex", "("], 2, ["bad regular expression"]),
        (["restore", "{sharded}", "--regex", "^zzz"], 2, ["no tensor name matches"]),
        (["ls", "{sharded}", "--storage-options", "{{bad"], 2, ["not valid JSON"]),
        (["ls", "{sharded}", "--storage-options", "[1]"], 2, ["expected a JSON object"]),
        (["ls", "{sharded}", "--storage-option", "novalue"], 2, ["expected key=value"]),
        (["restore", "{sharded}", "--output", "{tmp}/x.csv"], 2, ["must end in .npz or .safetensors"]),
        (["restore", "{sharded}", "--max-inflight-bytes", "lots"], 2, ["byte count"]),
        (["restore", "{sharded}", "--executor", "dask"], 2, ["invalid choice"]),
        (["restore", "{v1}"], 2, ["UnsupportedCheckpointError", "V1"]),
        (["merge", "{tmp}/nope", "{tmp}/out"], 2, ["nope"]),
    ],
)
def test_exit_codes_and_one_line_errors(argv, code, fragments, sharded, fixtures_dir, tmp_path, capsys):
    subs = {"tmp": tmp_path, "sharded": sharded, "v1": fixtures_dir / "v1_format"}
    assert main([a.format(**subs) for a in argv]) == code
    assert_one_line_error(capsys.readouterr().err, f"distrestore {argv[0]}", *fragments)


def test_process_exit_codes_and_debug(tmp_path):
    run = run_cli("ls", tmp_path / "nope")
    assert run.returncode == 2 and run.stdout == ""
    assert_one_line_error(run.stderr, "distrestore ls: CheckpointNotFoundError")
    run = run_cli("--debug", "ls", tmp_path / "nope")
    assert (
        run.returncode == 2
        and "Traceback" in run.stderr
        and run.stderr.rstrip().endswith(str(tmp_path / "nope.index)"))
    )


def test_bad_s3_credentials_are_a_storage_failure(tmp_path, fixtures_dir):
    """A moto server that checks credentials (its own process, INITIAL_NO_AUTH_ACTION_COUNT=0):
    a restore with keys it does not know fails with exit code 1 and one line."""
    pytest.importorskip("s3fs")
    from conftest import moto_process

    with moto_process(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        run = run_cli(
            "restore",
            "s3://bucket/model.ckpt-7",
            "--storage-option",
            f"endpoint_url={endpoint}",
            "--storage-option",
            "key=AKIAWRONGWRONGWRONG",
            "--storage-option",
            "secret=not-the-secret",
            "--no-progress",
            timeout=180,
        )
    assert run.returncode == 1, run.stderr
    assert_one_line_error(run.stderr, "distrestore restore:")
    assert "not-the-secret" not in run.stderr


def test_storage_option_values():
    assert key_value("anon=true") == ("anon", True)
    assert key_value("endpoint_url=http://h:1") == ("endpoint_url", "http://h:1")
    assert key_value('client_kwargs={"region_name": "x"}') == ("client_kwargs", {"region_name": "x"})
    assert key_value("n=3") == ("n", 3) and key_value("a=b=c") == ("a", "b=c")


def test_storage_option_overrides_storage_options(remote, capsys):
    url, options = remote("many_small")
    url += "/many"
    wrong = dict(options, endpoint_url="http://127.0.0.1:9") if remote.name != "memory" else {"nothing": 1}
    argv = ["ls", url, "--storage-options", json.dumps(wrong), "--json"]
    for key, value in options.items():
        argv += ["--storage-option", f"{key}={json.dumps(value)}"]
    if remote.name == "memory":
        argv = ["ls", url, "--json"]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2000


def test_timeout_and_deadline_are_taken_by_every_reading_command(sharded, tmp_path, capsys):
    for argv in (
        ["ls", sharded],
        ["tree", sharded],
        ["plan", sharded],
        ["restore", sharded, "--no-progress"],
        ["convert", sharded, str(tmp_path / "out.safetensors"), "--regex", "^part_", "--no-progress"],
    ):
        assert main([*argv, "--timeout", "30", "--deadline", "120"]) == 0, argv
    capsys.readouterr()
    assert main(["restore", sharded, "--deadline", "0", "--no-progress"]) == 2  # not a number of seconds
    assert main(["ls", sharded, "--timeout", "-1"]) == 2
    assert "positive number of seconds" in capsys.readouterr().err


@pytest.fixture(params=["s3", "gcs"])
def stalling(request):
    """``(checkpoint URL, proxy, storage-option arguments)`` of tf1_sharded behind a fault proxy."""
    from conftest import FIXTURES_DIR
    from fault_proxy import FaultProxy

    store = request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server"}[request.param])
    url = store.upload_fixture(FIXTURES_DIR / "tf1_sharded") + "/model.ckpt-7"
    proxy = FaultProxy(store.endpoint, request.param).start()
    options = {**store.storage_options, "endpoint_url": proxy.url}
    try:
        yield url, proxy, ["--storage-options", json.dumps(options)]
    finally:
        proxy.stop()


DEADLINE, SLACK = 1.0, 1.0


@pytest.mark.parametrize("command", ["ls", "tree", "plan", "restore", "convert"])
def test_deadline_bounds_each_command_against_a_stalled_endpoint(stalling, command, tmp_path, capsys):
    import time

    url, proxy, options = stalling
    proxy.add_rule("stall")  # every request accepted, never answered
    argv = [command, url, *options, "--deadline", str(DEADLINE)]
    argv += [str(tmp_path / "o.safetensors"), "--regex", "^part_"] if command == "convert" else []
    argv += ["--no-progress"] if command in ("restore", "convert") else []
    t0 = time.monotonic()
    assert main(argv) == 1
    elapsed = time.monotonic() - t0
    assert elapsed <= DEADLINE * 1.1 + SLACK, elapsed
    err = capsys.readouterr().err
    assert_one_line_error(err, f"distrestore {command}: DeadlineExceededError", "model.ckpt-7.index")


def test_deadline_bounds_a_restore_whose_data_file_stalls(stalling, capsys):
    import time

    url, proxy, options = stalling
    proxy.add_rule("stall", match="data-00002")  # the index answers; one data file never does
    # room for the client's set-up and the index before the stall (s3fs makes its botocore
    # client on the first request: 1.3 s once in a loaded run, past a 1 s deadline)
    deadline = 3 * DEADLINE
    t0 = time.monotonic()
    assert main(["restore", url, *options, "--deadline", str(deadline), "--no-progress"]) == 1
    elapsed = time.monotonic() - t0
    assert elapsed <= deadline * 1.1 + SLACK, elapsed
    err = capsys.readouterr().err
    # the file, and the byte ranges and tensors that were waiting for it (its size or its bytes)
    assert_one_line_error(err, "distrestore restore: DeadlineExceededError", "model.ckpt-7.data-00002-of-00004")
    assert re.search(r"bytes \[\d+, \d+\)", err) and "tensors" in err


def test_the_process_exits_1_with_one_line_when_the_deadline_passes(stalling):
    url, proxy, options = stalling
    proxy.add_rule("stall", match="data-00001")
    run = run_cli("restore", url, *options, "--deadline", "2", "--no-progress", timeout=120)
    assert run.returncode == 1, run.stderr
    assert_one_line_error(run.stderr, "distrestore restore: DeadlineExceededError", "data-00001-of-00004", "bytes [")


def test_progress_bar_on_a_terminal(sharded):
    """On a terminal (stderr is a pty) restore shows tqdm's bar; piped, it does not."""
    pytest.importorskip("tqdm")
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 x 0
    try:
        run = run_cli("restore", sharded, stderr=slave, stdout=subprocess.PIPE, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert run.returncode == 0
    assert "restore" in err and "100%" in err, err
    assert run.stdout.startswith("restored 13 tensors")
    piped = run_cli("restore", sharded)
    assert piped.returncode == 0 and "100%" not in piped.stderr


def test_module_entry_point_runs_the_same_main(fixtures_dir):
    run = run_cli("ls", fixtures_dir / "manager", "--json")
    assert run.returncode == 0 and {r["name"] for r in json.loads(run.stdout)} >= {"v/.ATTRIBUTES/VARIABLE_VALUE"}
