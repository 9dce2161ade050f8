"""Child side of the kill-point tests (``test_writes_atomic.py``): one write, its steps counted,
a real SIGKILL (or an injected ENOSPC) at a chosen step.

Run as a script, this is a small server: it imports numpy and distrestore once, then reads one
JSON job per line on stdin, forks a child per job and answers one JSON line per job on stdout::

    {"status": "done" | "killed" | "raised", "steps": [[kind, detail], ...], "error": [type, message]}

A job is ``{"op": "save", "prefix": P, "version": V, "num_shards": N}`` or
``{"op": "merge", "sources": [...], "dest": D, "delete_sources": bool}``, plus
``"storage_options"``, ``"at"`` (the 1-based step to act at; null: none), ``"mode"`` (``"kill"``:
SIGKILL before the step runs; ``"raise"``: the step fails with ENOSPC) and ``"hook"``:

* ``"os"``: the steps are calls of ``os.fsync``, ``os.replace``, ``os.rename``, ``os.link``,
  ``os.remove`` and ``os.unlink`` (every call that changes what a later reader sees, or makes it
  durable);
* ``"s3"``: the steps are the S3 requests that change a bucket (PUT, POST, DELETE).

The hooks wrap the standard library or botocore in the child only; the library runs unchanged.
``tensors(version)`` and ``source_tensors(i)`` are the values the jobs write; tests import them.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys

import numpy as np

OS_STEPS = ("fsync", "replace", "rename", "link", "remove", "unlink")


def _strings(values) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def tensors(version: int) -> dict:
    """What ``save`` jobs write. Every version has the same names, dtypes and shapes under
    ``shared/`` (so the same offsets: an index of one version over data of another would read
    plausible wrong values if nothing checked), and one name of its own."""
    rng = np.random.default_rng(version)
    return {
        "shared/w": rng.standard_normal((48, 16)).astype(np.float32),
        "shared/b": rng.integers(-(2**40), 2**40, size=24).astype(np.int64),
        "shared/h": rng.standard_normal(40).astype(np.float16),
        "shared/s": _strings([bytes([65 + version]) * 7, b"\x00v%d" % version]),
        "shared/step": np.int64(1000 + version),
        f"only_v{version}/x": np.arange(version + 3, dtype=np.float64),
    }


def source_tensors(i: int) -> dict:
    """What merge sources hold: names of their own (``src<i>/...``)."""
    rng = np.random.default_rng(100 + i)
    return {
        f"src{i}/a": rng.standard_normal((12, 5)).astype(np.float32),
        f"src{i}/b": np.arange(30 + i, dtype=np.int32),
        f"src{i}/s": _strings([b"source %d" % i]),
    }


# -- child side --------------------------------------------------------------------------------


class _Steps:
    def __init__(self, out_fd: int, at: int | None, mode: str):
        self.out_fd, self.at, self.mode, self.n = out_fd, at, mode, 0

    def emit(self, obj) -> None:
        os.write(self.out_fd, (json.dumps(obj) + "\n").encode())

    def step(self, kind: str, detail: str) -> None:
        self.n += 1
        self.emit({"step": [kind, detail]})
        if self.n == self.at:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {kind} {detail})")


def _describe(arg) -> str:
    """A path's base name; for a file descriptor, the base name of what it has open."""
    if isinstance(arg, int):
        arg = os.readlink(f"/proc/self/fd/{arg}")
    return os.path.basename(os.fspath(arg))


def _hook_os(steps: _Steps) -> None:
    for name in OS_STEPS:
        real = getattr(os, name)

        def wrapped(*args, _real=real, _name=name, **kw):
            steps.step(_name, " ".join(map(_describe, args)))
            return _real(*args, **kw)

        setattr(os, name, wrapped)


def _hook_s3(steps: _Steps) -> None:
    from aiobotocore.endpoint import AioEndpoint

    real = AioEndpoint._send

    async def _send(self, request):
        if request.method in ("PUT", "POST", "DELETE"):
            steps.step(request.method, request.url.split("?")[0].rsplit("/", 1)[-1])
        return await real(self, request)

    AioEndpoint._send = _send


def _child(job: dict, out_fd: int) -> None:
    import distrestore as dr

    steps = _Steps(out_fd, job.get("at"), job.get("mode", "kill"))
    {"os": _hook_os, "s3": _hook_s3}[job.get("hook", "os")](steps)
    opts = job.get("storage_options")
    try:
        if job["op"] == "save":
            dr.save_tensors(job["prefix"], tensors(job["version"]), num_shards=job["num_shards"], storage_options=opts)
        else:
            dr.merge_checkpoints(
                job["sources"], job["dest"], delete_sources=job.get("delete_sources", False), storage_options=opts
            )
    except Exception as e:  # reported, not raised: the test decides what was allowed
        steps.emit({"raised": [type(e).__name__, str(e), isinstance(e, dr.DistRestoreError)]})
        return
    steps.emit({"done": True})


def _run(job: dict) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the server loop
        os.close(r)
        code = 0
        try:
            _child(job, w)
        except BaseException:
            code = 3
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    events = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    out = {"steps": [e["step"] for e in events if "step" in e], "status": "crashed", "error": None}
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        out["status"] = "killed"
    for e in events:
        if "done" in e:
            out["status"] = "done"
        if "raised" in e:
            out["status"], out["error"] = "raised", e["raised"]
    return out


def main() -> None:
    import distrestore  # noqa: F401  (imported once, before forking)

    try:
        import aiobotocore.endpoint  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        pass
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
