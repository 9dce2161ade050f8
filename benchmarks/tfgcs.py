"""Aiming TensorFlow's own GCS reader at the emulator, through the latency proxy.

TF's GCS file system (compiled into ``libtensorflow_framework``) has no endpoint setting: it
always asks ``https://www.googleapis.com/storage/v1/`` for metadata and
``https://storage.googleapis.com/<bucket>/<object>`` for bytes (TF 2.21's binary: no
``STORAGE_EMULATOR_HOST``; its ``GCS_*`` variables tune caches, retries and timeouts). Three of
its settings let it be pointed elsewhere without touching the machine:

- it resolves those names with the system resolver, so the TF child runs in a mount namespace of
  its own (``unshare --mount``, root) where ``/etc/hosts`` maps both names to ``127.0.0.2``;
- it trusts the CA bundle named by ``CURL_CA_BUNDLE``: a throwaway CA (``openssl``) signs a
  certificate for both names, and the latency proxy serves HTTPS with it on ``127.0.0.2:443``,
  forwarding plain HTTP to fake-gcs-server (which serves ``storage.googleapis.com`` path-style
  downloads as well as the JSON API);
- with ``NO_GCE_CHECK=true`` and no credentials it sends an empty bearer token, which the
  emulator accepts.

:class:`TfGcs` sets this up and says why not where it cannot (not root, no ``unshare`` or
``openssl``, the address taken); the rest of the machine, ``/etc/hosts`` included, is unchanged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

from .latency_proxy import start_proxy

ADDRESS = "127.0.0.2"
NAMES = ("www.googleapis.com", "storage.googleapis.com")


def unavailable() -> str | None:
    """Why TF's GCS reader cannot be aimed at the emulator here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a mount namespace and port 443 need root"
    for tool in ("unshare", "openssl", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    s = socket.socket()
    try:
        s.bind((ADDRESS, 443))
    except OSError as e:
        return f"{ADDRESS}:443 is not free ({e})"
    finally:
        s.close()
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"unshare --mount fails: {done.stderr.strip()[:200]}"
    return None


class TfGcs:
    """The CA, the hosts file and (per latency) the HTTPS proxy; ``wrap(argv)`` runs a child in
    its own mount namespace with the hosts file, ``env`` its extra environment."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-tfgcs-")
        self.ca, self.cert, self.key = (os.path.join(self.dir, f) for f in ("ca.pem", "server.pem", "server.key"))
        self._certificates()
        self.hosts = os.path.join(self.dir, "hosts")
        with open("/etc/hosts") as f, open(self.hosts, "w") as out:
            out.write(f"{ADDRESS} {' '.join(NAMES)}\n" + f.read())
        self.env = {"CURL_CA_BUNDLE": self.ca, "NO_GCE_CHECK": "true"}

    def _certificates(self) -> None:
        ca_key, csr, ext = (os.path.join(self.dir, f) for f in ("ca.key", "server.csr", "ext.cnf"))
        with open(ext, "w") as f:
            f.write(f"subjectAltName={','.join('DNS:' + n for n in NAMES)}\nbasicConstraints=CA:FALSE\n")
        for cmd in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", self.ca, "-days", "2"]
            + ["-subj", "/CN=distrestore benchmark CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", csr, "-subj", f"/CN={NAMES[0]}"],
            ["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial", "-out", self.cert]
            + ["-days", "2", "-extfile", ext],
        ):
            subprocess.run(["openssl", *cmd], check=True, capture_output=True)

    def proxy(self, upstream_port: int, latency_ms: float):
        """An HTTPS latency proxy on 127.0.0.2:443 in front of the emulator: (process, URL)."""
        return start_proxy(f"127.0.0.1:{upstream_port}", latency_ms, host=ADDRESS, port=443, tls=(self.cert, self.key))

    def wrap(self, argv: list[str]) -> list[str]:
        script = f'mount --bind {self.hosts} /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", script, "sh", *argv]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
