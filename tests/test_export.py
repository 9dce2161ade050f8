"""Export out of TF's format: the exact ``.npz`` encoding (``distrestore.export.npz``) and
streaming conversion to safetensors (``distrestore.export.to_safetensors``), through the command
line and the library: every dtype of the all-dtypes fixture round-trips bit for bit, names that
``np.savez`` would mangle stay apart, safetensors' limits fail early and cleanly, sharded output has
Hugging Face's layout, a bucket checkpoint converts under a byte budget with bounded memory, and
nothing is left half written."""

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
from checks import assert_bit_exact, assert_one_line_error
from digest import value_digest

import distrestore as dr
from distrestore.cli import main
from distrestore.export.npz import MANIFEST_MEMBER

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def all_dtypes(fixtures_dir):
    return str(fixtures_dir / "all_dtypes" / "all")


@pytest.fixture(scope="module")
def expected_all(fixtures_dir):
    return json.loads((fixtures_dir / "all_dtypes" / "expected.json").read_text())["tensors"]


@pytest.fixture
def safe_open(monkeypatch):
    """``safetensors.safe_open``. Its numpy loader looks float8 types up as numpy attributes
    (``np.float8_e5m2``), which numpy does not have; ml_dtypes' are the same types."""
    safetensors = pytest.importorskip("safetensors")
    import ml_dtypes

    for name in ("float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz"):
        monkeypatch.setattr(np, name, getattr(ml_dtypes, name), raising=False)
    return safetensors.safe_open


def test_npz_round_trips_every_dtype(all_dtypes, expected_all, tmp_path, capsys):
    out = tmp_path / "all.npz"
    assert main(["restore", all_dtypes, "--output", str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    back = dr.load_npz(out)
    index = dr.open_checkpoint(all_dtypes)
    assert set(back) == {n for n, e in index.entries.items() if not e.dtype.is_variant}
    dtypes_seen = set()
    for name, value in back.items():
        want = expected_all[name]
        assert value_digest(value) == want["sha256"], name
        assert list(value.shape) == want["shape"], name
        assert value.dtype == index.entries[name].dtype.numpy, name
        dtypes_seen.add(want["dtype"])
    assert len(dtypes_seen) == 31  # 30 saveable dtypes and string
    # no pickle anywhere: numpy can read every member with allow_pickle=False
    with np.load(out, allow_pickle=False) as z:
        assert len(z.files) == len(back) + 1


def test_npz_names_that_would_collide(tmp_path, capsys):
    prefix = dr.save_tensors(str(tmp_path / "c"), {"a/b": np.float32(1), "a__b": np.float32(2), "x": [b"\0", b""]})
    assert main(["restore", prefix, "--output", str(tmp_path / "o.npz"), "--no-progress"]) == 0
    back = dr.load_npz(tmp_path / "o.npz")
    assert back["a/b"] == 1 and back["a__b"] == 2 and back["x"].tolist() == [b"\0", b""]


def test_safetensors_output_round_trips(all_dtypes, expected_all, tmp_path, capsys, safe_open):
    from distrestore.export.to_safetensors import SAFETENSORS_DTYPES

    index = dr.open_checkpoint(all_dtypes)
    names = [n for n, e in index.entries.items() if e.dtype.name in SAFETENSORS_DTYPES]
    out = tmp_path / "all.safetensors"
    assert main(["restore", all_dtypes, "--names", *names, "--output", str(out), "--no-progress"]) == 0
    with safe_open(str(out), "numpy") as f:
        assert sorted(f.keys()) == sorted(names)
        for name in names:
            value = f.get_tensor(name)
            assert value_digest(value) == expected_all[name]["sha256"], name
            assert list(value.shape) == expected_all[name]["shape"]
        assert json.loads(f.metadata()["tf_dtypes"])["dtype/qint8"] == "qint8"
    kinds = {index.entries[n].dtype.name for n in names}
    assert {"bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz", "bool"} <= kinds


def test_convert_refuses_what_safetensors_cannot_hold(all_dtypes, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["convert", all_dtypes, str(out), "--no-progress"]) == 2
    assert_one_line_error(capsys.readouterr().err, "UnsupportedCheckpointError", "'dtype/complex128' is complex128")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half written
    assert main(["convert", all_dtypes, str(out), "--regex", "^special/", "--no-progress"]) == 0


def test_convert_shards_with_an_index(fixtures_dir, tmp_path, capsys, safe_open):
    src = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    out = tmp_path / "model.safetensors"
    assert main(["convert", src, str(out), "--max-shard-bytes", "200", "--regex", "^(big|part|scope1)"]) == 0
    assert "wrote" in capsys.readouterr().out
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f) for f in files)
    assert files == sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    total = 0
    for name, file in index["weight_map"].items():
        with safe_open(str(tmp_path / file), "numpy") as f:
            value = f.get_tensor(name)
        assert_bit_exact(value, dr.load_variable(src, name), name)
        total += value.nbytes
    assert index["metadata"]["total_size"] == total


def test_convert_a_bucket_checkpoint(remote, tmp_path, capsys, safe_open):
    url, options = remote("tf1_sharded")
    out = tmp_path / "m.safetensors"
    argv = ["convert", url + "/model.ckpt-7", str(out), "--regex", "^(big|part)", "--no-progress"]
    for key, value in options.items():
        argv += ["--storage-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    assert main(argv) == 0
    with safe_open(str(out), "numpy") as f:
        for name in f.keys():
            assert_bit_exact(f.get_tensor(name), dr.load_variable(url, name, storage_options=options), name)


def test_convert_streams_under_a_byte_budget(gcs_server, tmp_path):
    """A 64 MiB checkpoint in a bucket converted with --max-inflight-bytes 4MiB: the process's
    resident memory grows by well under half the checkpoint (its RSS sampled every 2 ms; measured
    here: about 4 x the budget, the same for 64 to 256 MiB checkpoints)."""
    pytest.importorskip("psutil")
    rng = np.random.default_rng(7)
    tensors = {f"layer_{i:02d}/w": rng.standard_normal(1 << 20).astype(np.float32) for i in range(16)}  # 4 MiB each
    local = dr.save_tensors(str(tmp_path / "src" / "model"), tensors, num_shards=4)
    url = gcs_server.upload(tmp_path / "src") + "/model"
    out = tmp_path / "out.safetensors"
    script = f"""
import json, os, threading, time
import psutil
import distrestore as dr
from distrestore.cli import main
opts = json.loads({json.dumps(json.dumps(gcs_server.storage_options))})
dr.list_variables({url!r}, storage_options=opts)  # imports and the filesystem made before measuring
proc, peak, done = psutil.Process(), [0], threading.Event()
base = proc.memory_info().rss
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=sample); t.start()
rc = main(["convert", {url!r}, {str(out)!r}, "--storage-options", json.dumps(opts),
           "--max-inflight-bytes", "4MiB", "--no-progress"])
done.set(); t.join()
print(json.dumps({{"rc": rc, "growth": max(peak[0] - base, 0)}}))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    size = sum(a.nbytes for a in tensors.values())
    assert result["rc"] == 0
    assert result["growth"] < size / 2, (
        f"RSS grew by {result['growth'] / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB checkpoint"
    )
    from safetensors.numpy import load_file

    back = load_file(str(out))
    assert set(back) == set(tensors) and all(back[n].tobytes() == tensors[n].tobytes() for n in tensors)
    assert dr.list_variables(local)  # the source is untouched


# -- the library --------------------------------------------------------------------------------


def test_save_npz_keeps_tf_dtypes_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "q.npz"
    dr.save_npz(
        path, [("q", np.array([-3, 4], np.int8)), ("s", np.array(b"x", dtype=object))], tf_dtypes={"q": "qint8"}
    )
    with np.load(path, allow_pickle=False) as z:
        manifest = json.loads(z[MANIFEST_MEMBER].tobytes())
    assert [(e["name"], e["dtype"], e["encoding"]) for e in manifest["tensors"]] == [
        ("q", "qint8", "array"),
        ("s", "string", "strings"),
    ]
    back = dr.load_npz(path)
    assert back["q"].tolist() == [-3, 4] and back["s"].shape == () and back["s"].item() == b"x"
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(dr.CorruptCheckpointError, match="not written by distrestore"):
        dr.load_npz(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="added twice"):
        dr.save_npz(tmp_path / "twice.npz", [("a", 1.0), ("a", 2.0)])
    assert not (tmp_path / "twice.npz").exists()  # a failed write leaves nothing


def test_convert_leaves_nothing_when_a_read_fails(fixtures_dir, tmp_path):
    shutil.copytree(fixtures_dir / "tf1_sharded", tmp_path / "c")
    data = tmp_path / "c" / "model.ckpt-7.data-00003-of-00004"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    with pytest.raises(dr.ChecksumMismatchError, match="big/part5"):
        dr.convert_to_safetensors(tmp_path / "c", out, ["part_rows", "big/part5", "scope1/w"], max_shard_bytes=100)
    assert list(out.parent.iterdir()) == []


def test_convert_checks_its_arguments(fixtures_dir, tmp_path):
    src = fixtures_dir / "tf1_sharded"
    with pytest.raises(ValueError, match=".safetensors"):
        dr.convert_to_safetensors(src, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="positive"):
        dr.convert_to_safetensors(src, tmp_path / "m.safetensors", max_shard_bytes=0)
    with pytest.raises(dr.TensorNotFoundError):
        dr.convert_to_safetensors(src, tmp_path / "m.safetensors", ["nope"])
