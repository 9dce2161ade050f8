#!/usr/bin/env python
"""The restore service on a multi-node Ray cluster, against its contenders, as ratios.

    python benchmarks/service.py [--quick] [--workloads whole,quarters,small,late,rate,plan]
                                 [--out benchmarks/RESULTS-service.md] [--reps 3]

A ``ray.cluster_utils.Cluster`` (a head for the driver and the coordinator, and ``--nodes``
worker nodes, 4 by default) on this machine; checkpoints in fake-gcs-server behind the latency
proxy (``latency_proxy.py``) at 20 ms per request with a total bandwidth cap (200 MB/s), which
stands in for a bucket's egress and counts the bytes that leave it. Workers are Ray actors, one
or two per worker node. Contenders of a workload run interleaved, the median of ``--reps``
rounds after one warm-up round; every worker checks the SHA-1 of everything it restored, and a
failed check is reported as a failure, never as a number. Workloads and targets (issue E):

* ``whole``: 4 workers on 4 nodes each want the whole ~1 GB checkpoint. Service (one group) vs
  4 independent ``restore_tensors`` vs one process alone: storage bytes 1.00 x the checkpoint;
  wall <= 0.5 x independent and <= 1.3 x one process.
* ``quarters``: 4 workers each initialize a quarter of every partitioned variable (stored as 5
  row slices, restored 4 ways) through ``VariableStore``: storage bytes 1.00 x needed, CRC
  verified, bytes handed to each node <= 1.05 x its share.
* ``small``: 8 workers x 10,000 small variables, half shared: <= 2 x one process restoring their
  union with threads.
* ``late``: one 4 MiB tensor registered after it was read: <= 50 ms, 0 storage requests.
* ``rate``: 64 simulated clients (threads in 4 actors) registering small requests straight to
  the coordinator: >= 2,000 registrations/s (cached bytes; fresh bytes reported too).
* ``plan``: the coordinator planning the union of 8 workers' 10^6 small tensors, in this
  process, no Ray: <= 3 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from latency_proxy import start_proxy  # noqa: E402
from run import BUCKET, _proxy_get, digest, machine, software, start_fake_gcs, upload  # noqa: E402

import distrestore as dr  # noqa: E402

MiB = 2**20
ALL = ("whole", "quarters", "small", "late", "rate", "plan")


def sizes(quick: bool) -> dict:
    return {
        "whole_big": (4 if quick else 15, 4 * MiB if quick else 16 * MiB),  # float32 elements each
        "quarters": {"vars": 4, "rows": 2000 if quick else 8000, "cols": 1024 if quick else 2048, "slices": 5},
        "small_each": 1000 if quick else 10_000,
        "plan_tensors": 100_000 if quick else 1_000_000,
        "rate_seconds": 3 if quick else 10,
    }


# -- checkpoints -------------------------------------------------------------------------------


def write_whole(d: str, spec) -> dict:
    n, elems = spec
    rng = np.random.default_rng(1)
    tensors = {f"big/{i:02d}": rng.standard_normal(elems, dtype=np.float32) for i in range(n)}
    tensors["late/4mib"] = rng.standard_normal(MiB, dtype=np.float32)  # for ``late``
    tensors.update({f"small/{i:04d}": rng.standard_normal(256, dtype=np.float32) for i in range(1000)})
    return _save(d, tensors)


def write_small(d: str, each: int) -> dict:
    rng = np.random.default_rng(2)
    names = [f"shared/{i:05d}" for i in range(each // 2)]
    names += [f"w{k}/{i:05d}" for k in range(8) for i in range(each // 2)]
    return _save(d, {n: rng.standard_normal(64, dtype=np.float32) for n in names})


def _save(d: str, tensors: dict) -> dict:
    prefix = dr.save_tensors(os.path.join(d, "model"), tensors, num_shards=2)
    return {"prefix": prefix, "digests": {k: digest(v) for k, v in tensors.items()}, "bytes": _bytes(tensors)}


def _bytes(tensors) -> int:
    return int(sum(np.asarray(v).nbytes for v in tensors.values()))


def write_quarters(d: str, spec: dict) -> dict:
    """Variables stored as row slices (TF's SaveV2 + MergeV2Checkpoints, in a subprocess: the
    driver stays free of TF); without TF, stored whole (still restored into 4 parts). Digests
    are of each variable's 4 row blocks, keyed ``name/k``."""
    spec = {**spec, "shards": 3}
    target = os.path.join(d, "model")
    code = (
        f"import json, sys, numpy as np; sys.path[:0] = [{ROOT!r}, {HERE!r}]; import run, service; "
        f"full, _, how = run._build_partitioned({target!r}, {spec!r}, np.random.default_rng(3), {d!r}); "
        "print(json.dumps({'how': how, 'digests': service.quarter_digests(full)}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    size = spec["rows"] * spec["cols"] * 4 * spec["vars"]
    if done.returncode == 0:
        out = json.loads(done.stdout.strip().splitlines()[-1])
        return {"prefix": os.path.join(d, "model"), "bytes": size, **out}
    rng = np.random.default_rng(3)
    full = {f"part/var{v}": rng.random((spec["rows"], spec["cols"]), dtype=np.float32) for v in range(spec["vars"])}
    man = _save(d, full)
    man.update(how="distrestore.save_tensors, unpartitioned (TF not importable)", digests=quarter_digests(full))
    return man


def quarter_digests(full: dict) -> dict:
    return {f"{n}/{k}": digest(v[a:b]) for n, v in full.items() for k, (a, b) in enumerate(_quarters(len(v)))}


# -- the cluster and its workers ---------------------------------------------------------------


class Env:
    """The cluster, the bucket behind the proxy, and the worker actors."""

    def __init__(self, args):
        import ray
        from ray.cluster_utils import Cluster

        self.args = args
        self.gcs, port = start_fake_gcs()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proxy, self.purl = start_proxy(f"127.0.0.1:{port}", args.latency_ms, bandwidth_mbps=args.bandwidth_mbps)
        self.options = {"endpoint_url": self.purl, "token": "anon", "use_listings_cache": False}
        store = args.object_store_mb * MiB
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": 256 * MiB, "include_dashboard": False},
        )
        for k in range(args.nodes):
            self.cluster.add_node(num_cpus=2, resources={f"n{k}": 1}, object_store_memory=store)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        self.nodes = [next(n["NodeID"] for n in alive if f"n{k}" in n["Resources"]) for k in range(args.nodes)]
        self.workers: dict[int, object] = {}

    def upload(self, man: dict, name: str) -> str:
        url = f"gs://{BUCKET}/{name}/model"
        upload(self.endpoint, man["prefix"], url)
        return url

    def worker(self, k: int):
        """Worker actor ``k`` (node ``k mod nodes``), started once and kept."""
        if k not in self.workers:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self.nodes[k % len(self.nodes)]
            w = Worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            import ray

            ray.get(w.ready.remote())
            self.workers[k] = w
        return self.workers[k]

    def storage(self) -> dict:
        return _proxy_get(self.purl, "/__proxy_stats")

    def reset(self) -> None:
        _proxy_get(self.purl, "/__proxy_reset")

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        for p in (self.proxy, self.gcs):
            p.terminate()
            p.wait(10)


def _worker_class():
    import ray

    @ray.remote(num_cpus=0)
    class Worker:
        """One worker of a job: restores, times it, and checks what it got."""

        def ready(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def restore_alone(self, url, options, names, digests):
            t = time.perf_counter()
            out = dr.restore_tensors(url, names, storage_options=options)
            return time.perf_counter() - t, _check(out, digests)

        def via_service(self, service, url, names, digests, group=None, world_size=None, regions=None):
            client = dr.connect(service)
            index = client.checkpoint(url)
            reqs = [dr.TensorRequest(index, n, (regions or {}).get(n)) for n in names]
            t = time.perf_counter()
            arrays = client.fetch(reqs, group=group, world_size=world_size, deadline=1800)
            return time.perf_counter() - t, _check(dict(zip(names, arrays)), digests)

        def quarter(self, service, url, variables, rank, group, digests):
            """Its quarter of every variable, through a VariableStore, checked against the rows."""
            client = dr.connect(service)
            store = dr.VariableStore()
            index = client.checkpoint(url)
            mine = {}
            for name, shape in variables.items():
                mine[name] = store.get_variable(name, shape=shape, partitions=[4, 1]).parts[rank]
            dr.init_from_checkpoint(index, {n: [p] for n, p in mine.items()}, store=store)
            t = time.perf_counter()
            client.initialize(store, group=group, world_size=4, deadline=1800)
            seconds = time.perf_counter() - t
            return seconds, _check({f"{n}/{rank}": p.numpy() for n, p in mine.items()}, digests)

        def simulate(self, service, reg, threads, seconds):
            """``threads`` simulated clients registering ``reg`` straight to the coordinator."""
            actor = ray.get_actor(service)
            counts = [0] * threads
            stop = time.monotonic() + seconds

            def loop(i):
                while time.monotonic() < stop:
                    reply = ray.get(actor.register.remote(reg[(i + threads * counts[i]) % len(reg)], 600))
                    ray.get(reply.refs)  # the objects too, as a client would
                    counts[i] += 1

            pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            return sum(counts)

    return Worker


def _check(out: dict, digests: dict) -> bool:
    return all(digest(np.ascontiguousarray(v)) == digests[k] for k, v in out.items())


Worker = None  # made once Ray is imported (``main``)


# -- the workloads -----------------------------------------------------------------------------


class Bench:
    def __init__(self, env: Env, args, work: str):
        self.env, self.args, self.work = env, args, work
        self.rows: list[tuple] = []  # (workload, what, value, target, holds)
        self.notes: list[str] = []
        self.whole: dict | None = None

    def serve(self, name: str, url: str):
        return dr.serve(url, name=name, storage_options=self.env.options)

    def rounds(self, contenders: dict) -> dict:
        """Interleaved rounds of every contender, one warm-up first; median wall per contender,
        and the storage bytes of its last round."""
        import ray

        walls = {k: [] for k in contenders}
        storage = {}
        for r in range(self.args.reps + 1):
            for name, run in contenders.items():
                self.env.reset()
                t = time.perf_counter()
                results = ray.get(run(r))
                wall = time.perf_counter() - t
                if not all(ok for _, ok in results):
                    raise RuntimeError(f"{name}: a worker's values did not match")
                storage[name] = self.env.storage()
                if r:
                    walls[name].append(wall)
        return {k: (statistics.median(v), storage[k]) for k, v in walls.items()}

    def run_whole(self) -> None:
        d = os.path.join(self.work, "whole")
        man = self.whole = write_whole(d, sizes(self.args.quick)["whole_big"])
        url = man["url"] = self.env.upload(man, "whole")
        names = list(man["digests"])
        digests = man["digests"]
        client = self.serve("bench-whole", url)
        self.whole_client = client
        w = [self.env.worker(k) for k in range(4)]

        def service(r):
            client.release()
            return [x.via_service.remote("bench-whole", url, names, digests, f"whole-{r}", 4) for x in w]

        res = self.rounds(
            {
                "service": service,
                "independent": lambda r: [x.restore_alone.remote(url, self.env.options, names, digests) for x in w],
                "one process": lambda r: [w[0].restore_alone.remote(url, self.env.options, names, digests)],
            }
        )
        size = man["bytes"]
        s, i, o = res["service"], res["independent"], res["one process"]
        self.rows += [
            ("whole", f"service: {s[0]:.2f} s, storage {s[1]['response_bytes'] / size:.2f} x the checkpoint", None),
            ("whole", f"4 independent: {i[0]:.2f} s, storage {i[1]['response_bytes'] / size:.2f} x", None),
            ("whole", f"one process: {o[0]:.2f} s", None),
            ("whole", "storage bytes / checkpoint", _row(s[1]["response_bytes"] / size, "= 1.00", 1.0, abs_tol=0.005)),
            ("whole", "service wall / independent wall", _row(s[0] / i[0], "<= 0.5", 0.5)),
            ("whole", "service wall / one process wall", _row(s[0] / o[0], "<= 1.3", 1.3)),
        ]

    def run_late(self) -> None:
        import ray

        if self.whole is None:
            self.run_whole()
        man, client = self.whole, self.whole_client
        url, name = man["url"], "late/4mib"
        w = self.env.worker(1)
        ray.get(w.via_service.remote("bench-whole", url, [name], man["digests"]))  # read once, cached
        times = []
        before = self.env.storage()["requests"]
        for _ in range(max(5, self.args.reps * 3)):
            seconds, ok = ray.get(w.via_service.remote("bench-whole", url, [name], man["digests"]))
            assert ok
            times.append(seconds)
        reads = self.env.storage()["requests"] - before
        ms = statistics.median(times) * 1000
        self.rows += [
            ("late", "4 MiB tensor already read: answer time (ms)", _row(ms, "<= 50", 50)),
            ("late", "storage requests for it", _row(reads, "= 0", 0)),
        ]
        client.shutdown()

    def run_quarters(self) -> None:
        import ray

        spec = sizes(self.args.quick)["quarters"]
        man = write_quarters(os.path.join(self.work, "quarters"), spec)
        url = self.env.upload(man, "quarters")
        client = self.serve("bench-quarters", url)
        variables = {n.rsplit("/", 1)[0]: [spec["rows"], spec["cols"]] for n in man["digests"]}
        w = [self.env.worker(k) for k in range(4)]
        for r in range(self.args.reps):
            client.release()
            self.env.reset()
            before = client.stats()["bytes_served"]
            results = ray.get(
                [
                    x.quarter.remote("bench-quarters", url, variables, k, f"q{r}", man["digests"])
                    for k, x in enumerate(w)
                ]
            )
            if not all(ok for _, ok in results):
                raise RuntimeError("quarters: a worker's values did not match")
        stats = client.stats()
        storage = self.env.storage()["response_bytes"]
        share = man["bytes"] / 4
        served = [stats["bytes_served"].get(n, 0) - before.get(n, 0) for n in self.env.nodes[:4]]
        self.rows += [
            ("quarters", f"stored as: {man['how']}; {man['bytes'] / MiB:.0f} MiB", None),
            (
                "quarters",
                "storage bytes / needed (verify=True)",
                _row(storage / man["bytes"], "= 1.00", 1.0, abs_tol=0.005),
            ),
            ("quarters", "most bytes handed to a node / its share", _row(max(served) / share, "<= 1.05", 1.05)),
        ]
        client.shutdown()

    def run_small(self) -> None:
        each = sizes(self.args.quick)["small_each"]
        d = os.path.join(self.work, "small")
        man = write_small(d, each)
        url = self.env.upload(man, "small")
        client = self.serve("bench-small", url)
        shared = [n for n in man["digests"] if n.startswith("shared/")]
        wants = [shared + [n for n in man["digests"] if n.startswith(f"w{k}/")] for k in range(8)]
        union = list(man["digests"])
        w = [self.env.worker(k) for k in range(8)]

        def service(r):
            client.release()
            return [
                x.via_service.remote("bench-small", url, mine, man["digests"], f"small-{r}", 8)
                for x, mine in zip(w, wants)
            ]

        res = self.rounds(
            {
                "service": service,
                "one process, union": lambda r: [
                    w[0].restore_alone.remote(url, self.env.options, union, man["digests"])
                ],
            }
        )
        s, o = res["service"], res["one process, union"]
        self.rows += [
            (
                "small",
                f"8 workers x {each:,} small (half shared): service {s[0]:.2f} s; union alone {o[0]:.2f} s",
                None,
            ),
            ("small", "service wall / one process (union) wall", _row(s[0] / o[0], "<= 2", 2.0)),
        ]
        client.shutdown()

    def run_rate(self) -> None:
        import ray

        from distrestore.coordination.ranges import needed_ranges
        from distrestore.coordination.state import Registration
        from distrestore.plan import PlanOptions, build_plan

        each = sizes(self.args.quick)["small_each"]
        d = os.path.join(self.work, "rate")
        man = write_small(d, each)
        url = self.env.upload(man, "rate")
        client = self.serve("bench-rate", url)
        index = client.checkpoint()
        names = list(man["digests"])
        fids = {p: i for i, p in enumerate(index.data_files())}  # the service's first checkpoint

        def reg(name, node):
            plan = build_plan([dr.TensorRequest(index, name)], PlanOptions(workers=1))
            return Registration(needed_ranges(plan, fids), node, True)

        seconds = sizes(self.args.quick)["rate_seconds"]
        w = [self.env.worker(k) for k in range(4)]
        client.fetch([dr.TensorRequest(index, n) for n in names[:64]])  # cached: 64 small tensors
        stride = (len(names) - 64) // 4
        fresh = min(2000, stride)
        for label, count, pick in (
            ("cached", 64, lambda k, i: names[i]),
            ("fresh", fresh, lambda k, i: names[64 + k * stride + i]),  # each registration new bytes
        ):
            regs = [[reg(pick(k, i), self.env.nodes[k % len(self.env.nodes)]) for i in range(count)] for k in range(4)]
            t = time.perf_counter()
            done = sum(ray.get([x.simulate.remote("bench-rate", regs[k], 16, seconds) for k, x in enumerate(w)]))
            rate = done / (time.perf_counter() - t)
            self.rows.append(
                ("rate", f"64 clients, {label} small registrations per second", _row(rate, ">= 2000", 2000, more=True))
            )
        client.shutdown()

    def run_plan(self) -> None:
        """The coordinator's own planning cost, without Ray (CPU-bound: least affected by sharing)."""
        from distrestore.coordination.ranges import needed_ranges
        from distrestore.coordination.state import Coordinator, Registration
        from distrestore.plan import PlanOptions, Wants, build_plan

        n = sizes(self.args.quick)["plan_tensors"]
        d = os.path.join(self.work, "plan")
        prefix = dr.save_tensors(os.path.join(d, "m"), {f"v/{i:07d}": np.full(4, i, np.float32) for i in range(n)})
        index = dr.open_checkpoint(prefix)
        coord = Coordinator(cache_bytes=1 << 40)
        t = time.perf_counter()
        info = coord.add_checkpoint(index.prefix, index)
        opened = time.perf_counter() - t
        fids = {p: info.first_file + i for i, p in enumerate(index.data_files())}
        names = list(index.entries)
        regs = []
        for k in range(8):  # half shared, the rest interleaved: the worst case for cutting
            mine = names[: n // 2] + names[n // 2 + k :: 8]
            plan = build_plan(Wants([index] * len(mine), mine, [None] * len(mine)), PlanOptions(workers=8))
            regs.append(Registration(needed_ranges(plan, fids), f"node{k}", True, "g", 8))
        t = time.perf_counter()
        _, events = coord.register_many(regs)
        planned = time.perf_counter() - t
        assert not any(type(e).__name__ == "Failure" for e in events)
        self.rows += [
            ("plan", f"entry tables of {n:,} tensors (once per checkpoint): {opened:.2f} s", None),
            ("plan", f"union of 8 workers' {n:,} small tensors: plan (s)", _row(planned, "<= 3", 3.0)),
        ]


def _quarters(rows: int) -> list[tuple[int, int]]:
    """The row blocks of a [rows, ...] variable partitioned 4 ways (TF's fixed_size_partitioner)."""
    base, extra = divmod(rows, 4)
    out, a = [], 0
    for k in range(4):
        b = a + base + (1 if k < extra else 0)
        out.append((a, b))
        a = b
    return out


def _row(value: float, target: str, bound: float, *, more: bool = False, abs_tol: float = 0.0):
    holds = value >= bound if more else (abs(value - bound) <= abs_tol if target.startswith("=") else value <= bound)
    return value, target, holds


def report(bench: Bench, command: str, loads: list[float]) -> str:
    lines = [
        "# distrestore restore service: benchmark results",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}; {software()}.",
        f"Cluster: head + {bench.args.nodes} worker nodes (`ray.cluster_utils.Cluster`, one machine); "
        f"bucket: fake-gcs-server behind the latency proxy at {bench.args.latency_ms:g} ms per request, "
        f"{bench.args.bandwidth_mbps:g} MB/s in total. Median of {bench.args.reps} rounds after one warm-up.",
        f"Load average during the run: {min(loads, default=0):.2f} to {max(loads, default=0):.2f}.",
        "",
        "| workload | measure | value | target | holds |",
        "|---|---|---|---|---|",
    ]
    for workload, what, row in bench.rows:
        if row is None:
            lines.append(f"| {workload} | {what} | | | |")
        else:
            value, target, holds = row
            lines.append(f"| {workload} | {what} | {value:.3g} | {target} | {'yes' if holds else '**no**'} |")
    if bench.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in bench.notes]
    return "\n".join(lines)


def main() -> None:
    global Worker
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small checkpoints and few rounds: checks it runs")
    ap.add_argument("--workloads", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--out", default=None, help="default benchmarks/RESULTS-service.md (--quick: a temp file)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 3; --quick 1)")
    ap.add_argument("--nodes", type=int, default=4, help="worker nodes (at least 4)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--bandwidth-mbps", type=float, default=200.0)
    ap.add_argument("--object-store-mb", type=int, default=None, help="per worker node (default 1536; quick 256)")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.object_store_mb = args.object_store_mb or (256 if args.quick else 1536)
    if args.nodes < 4:
        ap.error("--nodes must be at least 4")
    workloads = [w for w in ALL if w in {x.strip() for x in args.workloads.split(",")}]
    command = "python benchmarks/service.py " + " ".join(sys.argv[1:])
    loads: list[float] = []
    sampling = threading.Event()

    def sample():
        while not sampling.wait(5.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample, daemon=True).start()
    loads.append(os.getloadavg()[0])
    work = tempfile.mkdtemp(prefix="dr-bench-service-")
    env = None
    try:
        needs_ray = [w for w in workloads if w != "plan"]
        bench = Bench(None, args, work)
        if needs_ray:
            env = bench.env = Env(args)
            Worker = _worker_class()
        for w in workloads:
            print(f"-- {w}", flush=True)
            try:
                getattr(bench, f"run_{w}")()
            except Exception as e:
                import traceback

                traceback.print_exc()
                bench.notes.append(f"{w}: the benchmark failed: {type(e).__name__}: {e}")
    finally:
        sampling.set()
        if env is not None:
            env.close()
        shutil.rmtree(work, ignore_errors=True)
    text = report(bench, command, loads)
    quick_out = os.path.join(tempfile.gettempdir(), "RESULTS-service-quick.md")
    out = args.out or (quick_out if args.quick else os.path.join(HERE, "RESULTS-service.md"))
    with open(out, "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"wrote {out}")
    sys.exit(1 if bench.notes else 0)


if __name__ == "__main__":
    main()
