"""The example as a Ray job: ``ray job submit`` against a Ray head started by this test.

The head is a ``ray start --head --block`` process of this test's own, in a process group of
its own, on free ports and a temporary directory of its own; the test stops exactly that group
(never ``ray stop``, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if exe is None:
        pytest.skip("the ray command line is not installed")
    return exe


@pytest.fixture(scope="module")
def head():
    """A Ray head with a job server; yields its dashboard URL."""
    pytest.importorskip("ray.dashboard", reason="ray job submit needs ray[default]")
    temp = tempfile.mkdtemp(prefix="drjob-")  # short: Ray's socket paths must stay under 108 bytes
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        [
            ray_cli(),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped below, and nothing else
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                    json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head's job server did not come up"
                time.sleep(0.5)
        yield url, env
    finally:
        # a graceful stop of a raylet takes half a minute: a short grace, then the whole group
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_of_the_example(head, tmp_path):
    url, env = head
    cmd = [
        ray_cli(),
        "job",
        "submit",
        "--address",
        url,
        "--working-dir",
        str(ROOT / "examples"),
        "--runtime-env-json",
        json.dumps({"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}}),
        "--",
        "python",
        "partitioned_init.py",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "every part bit-exact" in done.stdout, done.stdout[-3000:]
    assert "succeeded" in done.stdout
