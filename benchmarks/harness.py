"""The parent side: children, groups of contenders run side by side, calibration, targets.

Every measurement is a fresh child process (``python -m benchmarks.child``) started with
:func:`child_env`. A *group* runs its contenders interleaved, one warm-up round, then ``reps``
rounds, and keeps medians. Two protocols:

- **primed** (the default): right before each child the parent touches and frees 1.5 x the
  workload's bytes, so that every child faults memory that was freed a moment ago (this VM hands
  freed pages back to its host about 2 s after they are freed; see the README), which keeps the
  ratios stable whatever ran before;
- **fresh** (``fresh=True``): no primer, a settle pause before each child (so the memory the
  previous child freed has been handed back, as it has for a job that starts on an idle machine)
  and the order of the contenders reversed every other round: the first restore in a new process,
  as a user meets it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from . import workloads
from .workloads import GiB, MiB

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = "/usr/bin/time"
CHILD_ENV = {
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "NO_GCE_CHECK": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def child_env(extra: dict | None = None) -> dict:
    """The environment children run with: this one, the quiet settings above where unset, and
    the repository on ``PYTHONPATH`` (the parent's own environment is left as it is)."""
    env = dict(os.environ)
    for k, v in CHILD_ENV.items():
        env.setdefault(k, v)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra or {})
    return env


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_child(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str, int]:
    """Run a child; (exit code, stdout, stderr, peak RSS in bytes of its whole life).

    The RSS is GNU ``/usr/bin/time -f %M`` (its child's ``ru_maxrss``) where installed, else
    ``os.wait4``: on Linux a child inherits its parent's RSS high-water mark across fork + exec,
    so wait4 on a direct child of a big parent would report the parent's peak."""
    rss_file = None
    if os.access(TIME, os.X_OK):
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        argv = [TIME, "-f", "%M", "-o", rss_file] + argv
    p = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env or child_env(),
        cwd=ROOT,
    )
    out, err = [], []
    readers = [
        threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
        for s, b in ((p.stdout, out), (p.stderr, err))
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, 9)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    rss = ru.ru_maxrss * 1024
    if rss_file:
        try:
            with open(rss_file) as f:
                rss = int(f.read().strip().splitlines()[-1]) * 1024
        except (ValueError, IndexError, OSError):
            pass
        os.remove(rss_file)
    return p.returncode, "".join(out), "".join(err), rss


CHEAP = ("raw_local", "dr_threads", "dr_fetch", "dr_stream", "noop", "index_dr", "raw_get", "dr_remote")
"""Contenders that start in a moment (no TF, no Ray): a short run runs them once per set of
parameters, the others once per workload."""


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._every = every
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def since(self, n: int) -> tuple[float, float]:
        seen = self.samples[n:] or self.samples[-1:]
        return min(seen), max(seen)

    def stop(self) -> None:
        self._stop.set()


def wait_for_quiet(limit: float, most_seconds: float) -> float:
    """Wait (at most ``most_seconds``) for the 1-minute load average to drop below ``limit``;
    the load average at the end."""
    end = time.monotonic() + most_seconds
    load = os.getloadavg()[0]
    while load >= limit and time.monotonic() < end:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


class Runner:
    """Runs groups and records them and the targets, for the report (``report.write``)."""

    def __init__(self, args):
        self.args = args
        self.size = args.size
        self.short = args.size != "full"  # one round, no warm-up, no calibration
        self.reps = args.reps or (1 if self.short else 5)
        self.work = os.path.abspath(args.work)
        self.specs = workloads.specs(args.size)
        self.groups: list[dict] = []
        self.targets: list[dict] = []
        self.notes: list[str] = []
        self.sections: list[str] = []  # extra report sections (the service's table)
        self.manifests: dict = {}
        self.loads = LoadSampler()
        self.failures: list[str] = []
        self._ran: set[str] = set()  # a short run runs each contender once (see group)
        self.wrappers: dict = {}  # contender -> (argv wrapper, extra environment): TF's GCS reader

    # -- children --------------------------------------------------------------------------

    def child(self, contender: str, workload: str, params: dict | None = None, *, prime: bool = True) -> dict:
        params = dict(params or {})
        job = {"contender": contender, "wdir": os.path.join(self.work, workload), "params": params}
        proxy, cafile = params.get("endpoint"), params.get("cafile")
        if proxy:
            proxy_get(proxy, "/__proxy_reset", cafile)
        if prime:
            self.prime_memory(workload)
        argv = [sys.executable, "-m", "benchmarks.child", json.dumps(job)]
        wrap, env = self.wrappers.get(contender, (None, {}))
        rc, out, err, rss = run_child(wrap(argv) if wrap else argv, 900, child_env(env))
        res = None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
        if rc != 0 or res is None:
            tail = "\n".join(err.strip().splitlines()[-15:])
            return {"error": f"exit {rc}: {tail}", "life_rss": rss}
        res["life_rss"] = rss
        if proxy:
            res["proxy"] = proxy_get(proxy, "/__proxy_stats", cafile)
        return res

    def prime_memory(self, workload: str) -> None:
        """Touch and free 1.5 x the workload's bytes (0.5-2 GiB) right before a child, so that
        it faults memory freed a moment ago, which this VM has not handed back to its host yet."""
        if not self.args.no_prime:
            import numpy as np

            nbytes = self.manifests.get(workload, {}).get("bytes", 0)
            a = np.ones(int(min(2 * GiB, max(GiB // 2, 1.5 * nbytes))) // 8, dtype=np.float64)
            del a

    def group(
        self,
        title: str,
        workload: str,
        entries: list[tuple[str, str, dict]],
        *,
        note: str = "",
        nbytes: int | None = None,
        reps: int | None = None,
        refs: dict | None = None,
        fresh: bool = False,
        pause_after: dict | None = None,
        capped: dict | None = None,
    ) -> dict:
        """Run ``entries`` (label, contender, params) interleaved: a warm-up round, then
        ``reps`` rounds (``fresh``: see the module docstring); summaries by label.
        ``pause_after``: seconds to wait after a contender's runs (Ray's processes exit).
        ``capped``: {label: rounds} for slow contenders timed in only their first rounds (a
        reference that is far off, not a ratio judged near its bound)."""
        reps = 1 if self.short else (reps or self.reps)
        labels = [e[0] for e in entries]
        capped = {k: min(v, reps) for k, v in (capped or {}).items() if k in labels}
        warmup = 0 if self.short else 1
        settle = (0.5 if self.short else self.args.settle) if fresh else 0.0
        runs: dict[str, list] = {label: [] for label in labels}
        errors: dict[str, str] = {}
        skipped: set[str] = set()
        load_from = len(self.loads.samples)
        for rnd in range(warmup + reps):
            order = entries if not fresh or rnd % 2 == 0 else list(reversed(entries))
            for label, contender, params in order:
                if label in errors or label in skipped or rnd - warmup >= capped.get(label, reps):
                    continue
                key = json.dumps([workload, contender, params if contender in CHEAP else None], sort_keys=True)
                if self.short and key in self._ran:
                    skipped.add(label)
                    continue
                self._ran.add(key)
                if settle:
                    time.sleep(settle)
                res = self.child(contender, workload, params, prime=not fresh)
                if not self.short:
                    time.sleep((pause_after or {}).get(contender, 0))
                tag = "warm-up" if rnd < warmup else f"round {rnd - warmup + 1}/{reps}"
                if "error" in res:
                    errors[label] = res["error"]
                    log(f"{title} | {label} ({tag}): FAILED {res['error'][-300:]}")
                    continue
                if not res["check"]["ok"]:
                    errors[label] = f"bit-exact check failed: {res['check']}"
                    log(f"{title} | {label} ({tag}): CHECK FAILED {res['check']}")
                    continue
                log(
                    f"{title} | {label} ({tag}): {res['seconds']:.3f} s, user {res['user']:.2f} sys "
                    f"{res['sys']:.2f}, RSS {res['rss'] / MiB:.0f} MiB"
                    + (f", 2nd {res['second_restore']:.3f} s" if "second_restore" in res else "")
                    + (f", {res['proxy']['requests']} requests" if "proxy" in res else "")
                )
                if rnd >= warmup:
                    runs[label].append(res)
        rows = {}
        for label, _, _ in entries:
            rs = runs[label]
            if label in skipped:
                rows[label] = {"skipped": "short run: ran above"}
                continue
            if label in errors or not rs:
                rows[label] = {"error": errors.get(label, "no runs")}
                self.failures.append(f"{title} | {label}: {rows[label]['error'][-500:]}")
                continue
            secs = [r["seconds"] for r in rs]
            row = {
                "median": statistics.median(secs),
                "min": min(secs),
                "max": max(secs),
                "n": len(secs),
                "rss": max(r["rss"] for r in rs),
                "checked": rs[0]["check"]["checked"],
                "runs": rs,
            }
            for k in ("user", "sys", "minflt", "second_restore", "measured_seconds"):
                if k in rs[0]:
                    row[k] = statistics.median(r[k] for r in rs)
            if "proxy" in rs[0]:
                row["requests"] = statistics.median(r["proxy"]["requests"] for r in rs)
            rows[label] = row
        default_ref = next((e[0] for e in entries if e[0].startswith("distrestore")), None)
        g = {
            "title": title,
            "note": note,
            "rows": rows,
            "order": labels,
            "bytes": nbytes,
            "reps": reps,
            "capped": capped,
            "warmup": warmup,
            "fresh": fresh,
            "settle": settle,
            "load": self.loads.since(load_from),
            "refs": {e[0]: (refs or {}).get(e[0], default_ref) for e in entries},
        }
        self.groups.append(g)
        return g

    def calibrate(self, title, workload, configs: list[tuple[str, str, dict]], runs: int = 1) -> tuple[str, str, dict]:
        """The fastest of ``runs`` runs of each configuration (after one warm-up of the first);
        the first configuration, unmeasured, for a short run."""
        if self.short:
            return configs[0]
        _, contender0, params0 = configs[0]
        self.child(contender0, workload, params0)  # warm-up, discarded
        best, lines = None, []
        for label, contender, params in configs:
            secs = []
            for _ in range(runs):
                res = self.child(contender, workload, params)
                if "error" not in res and res["check"]["ok"]:
                    secs.append(res["seconds"])
            if not secs:
                lines.append(f"{label}: failed")
                continue
            lines.append(f"{label}: {min(secs):.3f} s")
            if best is None or min(secs) < best[0]:
                best = (min(secs), label, contender, params)
        log(f"{title} calibration: " + "; ".join(lines) + (f" -> {best[1]}" if best else ""))
        self.notes.append(
            f"{title}: ceiling configuration picked by the fastest of {runs} run(s) each: "
            + "; ".join(lines)
            + (f" → **{best[1]}**" if best else "")
        )
        if best is None:
            raise RuntimeError(f"{title}: no ceiling configuration worked")
        return best[1], best[2], best[3]

    def target(self, what: str, measured, required: str, holds: bool | None, detail: str = "") -> None:
        self.targets.append(dict(what=what, measured=measured, required=required, holds=holds, detail=detail))
        m = "n/a" if measured is None else (f"{measured:.2f}" if isinstance(measured, float) else str(measured))
        log(f"TARGET {what}: {m} (need {required}) -> {'yes' if holds else 'NO' if holds is not None else 'n/a'}")

    def speedup_target(self, what: str, slow: dict, fast: dict, need: float | None, *, info: str = "") -> None:
        """``slow``'s median time / ``fast``'s (how many times faster ``fast`` is) against ``need``
        (None: information only, ``info`` says why)."""
        r = ratio(slow, fast)
        required = f"≥ {need:g}" if need is not None else (info or "(no target)")
        self.target(what, r, required, None if need is None or r is None else r >= need, bestof(slow, fast))

    # -- workloads -------------------------------------------------------------------------

    def ensure_built(self, workload: str) -> dict:
        """Build ``workload`` once (reused while its spec matches), in a child process."""
        if workload in self.manifests:
            return self.manifests[workload]
        wdir = os.path.join(self.work, workload)
        spec = self.specs[workload]
        try:
            man = workloads.load(wdir)
            if man.get("spec") == spec and workloads.data_files(man["prefix"]):
                log(f"{workload}: reusing {wdir}")
                self.manifests[workload] = man
                return man
        except (OSError, ValueError):
            pass
        shutil.rmtree(wdir, ignore_errors=True)
        log(f"{workload}: building under {wdir} ...")
        argv = [sys.executable, "-m", "benchmarks.child", "--build", workload, "--size", self.size, "--work", self.work]
        rc, _, err, _ = run_child(argv, 1800)
        if rc != 0:
            raise RuntimeError(f"building {workload} failed:\n{err[-3000:]}")
        man = workloads.load(wdir)
        log(
            f"{workload}: built {man['count']} tensors, {man['bytes'] / 1e9:.3f} GB in "
            f"{man['build_seconds']} s with {man['writer']}"
        )
        self.manifests[workload] = man
        return man

    def drop(self, workload: str) -> None:
        """Remove a workload this run built or reused (not others under the work dir), unless
        ``--keep``."""
        if not self.args.keep and workload in self.manifests:
            shutil.rmtree(os.path.join(self.work, workload), ignore_errors=True)
            self.manifests.pop(workload, None)


def proxy_get(purl: str, path: str, cafile: str | None = None) -> dict:
    """The latency proxy's request counters (``path``: /__proxy_stats or /__proxy_reset); an
    HTTPS proxy is checked against ``cafile``."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    if context is not None:
        context.check_hostname = False  # the certificate names Google's hosts, not the address
    return json.loads(urllib.request.urlopen(purl + path, timeout=10, context=context).read())


def ratio(slow: dict, fast: dict) -> float | None:
    """``slow``'s median time / ``fast``'s (how many times faster ``fast`` is)."""
    if "median" not in slow or "median" not in fast or fast["median"] <= 0:
        return None
    return slow["median"] / fast["median"]


def bestof(slow: dict, fast: dict) -> str:
    """The same ratio from each side's fastest run (less sensitive to other users' load)."""
    if "min" not in slow or "min" not in fast or fast["min"] <= 0:
        return ""
    return f"fastest runs: {slow['min'] / fast['min']:.2f}"


def have(module: str) -> bool:
    """Whether ``module`` imports in a child (TF, ray: not imported by the parent)."""
    return run_child([sys.executable, "-c", f"import {module}"], 300)[0] == 0
