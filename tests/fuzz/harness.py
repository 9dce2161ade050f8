"""Drive fuzz workers (``worker.py`` child processes) and judge their results.

``Worker`` runs one request at a time with a wall-clock watchdog: a child that dies (a segfault,
a kill) or does not answer within ``timeout`` seconds is a failure of the case it was running,
and is replaced. ``run_many`` spreads requests over several workers. ``judge`` turns results
into failures (anything the worker flagged, and cases over the time or memory bounds) and
``summary`` into the figures docs/hostile-input.md reports.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

from .worker import FIXED_BUDGET, Outcome, Result

WORKER = Path(__file__).resolve().parent / "worker.py"
MAX_CPU_S = 1.0  # no case may take more CPU than this (all threads)
MAX_WALL_S = 1.0  # nor more wall time, where the machine is not loaded (see judge's slack)


class Worker:
    def __init__(self):
        env = dict(os.environ)
        env.update(MALLOC_ARENA_MAX="2", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )

    def op(self, case, op: str, *args, timeout: float = 60.0) -> Outcome:
        """Run one named operation on ``case`` in the child (see ``worker.run_op``)."""
        reply = self.request(("op", (case, op, args)), f"{case.label} {op}", timeout, raw=True)
        if isinstance(reply, Result):  # the child died or hung
            raise AssertionError(f"{case.label} {op}: {reply.failure}")
        return Outcome(*reply)

    def request(self, msg, label: str, timeout: float, raw: bool = False) -> Result:
        blob = pickle.dumps(msg)
        try:
            self.proc.stdin.write(struct.pack("<I", len(blob)) + blob)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                self.close(kill=True)
                return _dead(label, f"no answer within {timeout} s (hung)")
            head = self.proc.stdout.read(4)
            if len(head) < 4:
                raise EOFError
            reply = pickle.loads(self.proc.stdout.read(struct.unpack("<I", head)[0]))
            return reply if raw else Result(*reply)
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            return _dead(label, f"the worker died (exit status {code})")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.proc.stdin.write(struct.pack("<I", len(pickle.dumps(None))) + pickle.dumps(None))
                    self.proc.stdin.flush()
                except BrokenPipeError:
                    pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _dead(label: str, why: str) -> Result:
    return Result(label, "?", (), why, None, 0.0, 0.0, 0, 0)


def run_many(requests, workers: int = 2, timeout: float = 60.0, progress=None) -> list[Result]:
    """Run ``(message, label)`` requests on ``workers`` child processes; results in any order."""
    todo: queue.Queue = queue.Queue()
    for r in requests:
        todo.put(r)
    results: list[Result] = []
    lock = threading.Lock()

    def drive():
        w = Worker()
        try:
            while True:
                try:
                    msg, label = todo.get_nowait()
                except queue.Empty:
                    return
                if not w.alive():
                    w = Worker()
                try:
                    res = w.request(msg, label, timeout)
                except Exception as e:  # the harness's own trouble: still a failed case, never a lost one
                    res = _dead(label, f"harness: {type(e).__name__}: {e}")
                    w.close(kill=True)
                with lock:
                    results.append(res)
                    if progress is not None:
                        progress(len(results))
        finally:
            w.close()

    threads = [threading.Thread(target=drive) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def generated(level: str, seeds) -> list:
    return [(("gen", (level, s)), f"{level}:{s}") for s in seeds]


def memory_bound(r: Result) -> int:
    return FIXED_BUDGET + 4 * r.nbytes


def judge(results: list[Result], wall_slack: float = 1.0) -> list[str]:
    """Failures: what the worker flagged, and cases over the bounds (CPU time strictly; wall time
    times ``wall_slack``, for a machine others share)."""
    out = []
    for r in results:
        if r.failure:
            out.append(f"{r.label}: {r.failure}")
        elif r.cpu_s > MAX_CPU_S:
            out.append(f"{r.label}: took {r.cpu_s:.2f} CPU s")
        elif r.wall_s > MAX_WALL_S * wall_slack:
            out.append(f"{r.label}: took {r.wall_s:.2f} s")
        elif r.peak_bytes > memory_bound(r):
            out.append(f"{r.label}: peak memory {r.peak_bytes} bytes over its bound {memory_bound(r)}")
    return out


def summary(results: list[Result]) -> dict:
    agreed = [r.agreed for r in results if r.agreed is not None]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        for u in r.uses:
            outcomes[f"use:{u}"] = outcomes.get(f"use:{u}", 0) + 1
    return {
        "cases": len(results),
        "failures": sum(1 for r in results if r.failure),
        "decoders_agreed": f"{sum(agreed)} of {len(agreed)}",
        "max_cpu_s": round(max((r.cpu_s for r in results), default=0), 4),
        "max_wall_s": round(max((r.wall_s for r in results), default=0), 4),
        "max_peak_mib": round(max((r.peak_bytes for r in results), default=0) / 2**20, 2),
        "max_files_kib": round(max((r.nbytes for r in results), default=0) / 1024, 1),
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
    }
