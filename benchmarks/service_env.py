"""The restore service's benchmark environment: a ``ray.cluster_utils.Cluster`` (a head and
``nodes`` worker nodes) on this machine, the bucket (fake-gcs-server) behind the latency proxy
with a total bandwidth cap standing in for a bucket's egress, the worker actors pinned to nodes,
and the checkpoints they restore (``groups/service.py`` runs the workloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from .contenders import common
from .harness import ROOT, child_env, proxy_get
from .latency_proxy import start_proxy
from .servers import FakeGcs
from .workloads import MiB, digest


def sizes(size: str) -> dict:
    short = size != "full"
    return {
        "whole_big": (4 if short else 15, 4 * MiB if short else 16 * MiB),  # float32 elements each
        "quarters": {"vars": 4, "rows": 2000 if short else 8000, "cols": 1024 if short else 2048, "slices": 5},
        "small_each": 1000 if short else 10_000,
        "plan_tensors": {"full": 1_000_000, "quick": 100_000, "smoke": 20_000}[size],
        "rate_seconds": {"full": 10, "quick": 1.5, "smoke": 1}[size],
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
    import distrestore as dr

    prefix = dr.save_tensors(os.path.join(d, "model"), tensors, num_shards=2)
    return {"prefix": prefix, "digests": {k: digest(v) for k, v in tensors.items()}, "bytes": _bytes(tensors)}


def _bytes(tensors) -> int:
    return int(sum(np.asarray(v).nbytes for v in tensors.values()))


def quarters(rows: int) -> list[tuple[int, int]]:
    """The row blocks of a [rows, ...] variable partitioned 4 ways (TF's fixed_size_partitioner)."""
    base, extra = divmod(rows, 4)
    out, a = [], 0
    for k in range(4):
        b = a + base + (1 if k < extra else 0)
        out.append((a, b))
        a = b
    return out


def quarter_digests(full: dict) -> dict:
    return {f"{n}/{k}": digest(v[a:b]) for n, v in full.items() for k, (a, b) in enumerate(quarters(len(v)))}


def write_quarters(d: str, spec: dict) -> dict:
    """Variables stored as row slices (TF's SaveV2 + MergeV2Checkpoints, in a subprocess: the
    driver stays free of TF); without TF, stored whole (still restored into 4 parts). Digests
    are of each variable's 4 row blocks, keyed ``name/k``."""
    spec = {**spec, "shards": 3}
    prefix = os.path.join(d, "model")
    os.makedirs(d, exist_ok=True)
    code = (
        "import json, numpy as np; from benchmarks import workloads, service_env; "
        f"full, how = workloads.write_sliced({prefix!r}, {spec!r}, np.random.default_rng(3)); "
        "print(json.dumps({'how': how, 'digests': service_env.quarter_digests(full)}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    size = spec["rows"] * spec["cols"] * 4 * spec["vars"]
    if done.returncode == 0:
        out = json.loads(done.stdout.strip().splitlines()[-1])
        return {"prefix": prefix, "bytes": size, **out}
    rng = np.random.default_rng(3)
    full = {f"part/var{v}": rng.random((spec["rows"], spec["cols"]), dtype=np.float32) for v in range(spec["vars"])}
    man = _save(d, full)
    man.update(how="distrestore.save_tensors, unpartitioned (TF not importable)", digests=quarter_digests(full))
    return man


# -- the cluster and its workers ---------------------------------------------------------------


class Env:
    """The cluster, the bucket behind the proxy, and the worker actors."""

    def __init__(self, nodes: int, latency_ms: float, bandwidth_mbps: float, object_store_mb: int):
        import ray
        from ray.cluster_utils import Cluster

        self._environ = dict(os.environ)
        os.environ.update(child_env())  # Ray's processes inherit it: quiet settings, the repository on the path
        self.gcs = FakeGcs()
        self.proxy, self.purl = start_proxy(f"127.0.0.1:{self.gcs.port}", latency_ms, bandwidth_mbps=bandwidth_mbps)
        self.options = {"endpoint_url": self.purl, "token": "anon", "use_listings_cache": False}
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": 256 * MiB, "include_dashboard": False},
        )
        for k in range(nodes):
            self.cluster.add_node(num_cpus=2, resources={f"n{k}": 1}, object_store_memory=object_store_mb * MiB)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        self.nodes = [next(n["NodeID"] for n in alive if f"n{k}" in n["Resources"]) for k in range(nodes)]
        self._actors: dict[int, object] = {}
        self.worker_class = worker_class()

    def upload(self, man: dict, name: str) -> str:
        return self.gcs.upload(man["prefix"], name, "model")

    def workers(self, ks) -> list:
        """Worker actors ``ks`` (actor ``k`` on node ``k mod nodes``), each started once and kept.
        Those not yet running start together: each waits for a new worker process (0.5-0.6 s
        here), and one after another that wait added up."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        new = {}
        for k in ks:
            if k not in self._actors and k not in new:
                node = self.nodes[k % len(self.nodes)]
                affinity = NodeAffinitySchedulingStrategy(node, soft=False)
                new[k] = self.worker_class.options(scheduling_strategy=affinity).remote()
        ray.get([w.ready.remote() for w in new.values()])
        self._actors.update(new)
        return [self._actors[k] for k in ks]

    def storage(self) -> dict:
        return proxy_get(self.purl, "/__proxy_stats")

    def reset(self) -> None:
        proxy_get(self.purl, "/__proxy_reset")

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        self.proxy.terminate()
        self.proxy.wait(10)
        self.gcs.stop()
        os.environ.clear()
        os.environ.update(self._environ)


def check(out: dict, digests: dict) -> bool:
    """Whether every value in ``out`` matches its build-time digest (the contenders' check)."""
    return common.check(out.items(), digests, subset=True)["ok"]


def worker_class():
    import ray

    import distrestore as dr

    @ray.remote(num_cpus=0)
    class Worker:
        """One worker of a job: restores, times it, and checks what it got."""

        def ready(self) -> str:
            return ray.get_runtime_context().get_node_id()

        held: dict | None = None  # the values of the last restore, until check_held

        def restore_alone(self, url, options, names):
            """Seconds of ``restore_tensors``; the values are held for :meth:`check_held`."""
            t = time.perf_counter()
            out = dr.restore_tensors(url, names, storage_options=options)
            seconds = time.perf_counter() - t
            self.held = out
            return seconds

        def via_service(self, service, url, names, group=None, world_size=None):
            """Seconds of ``client.restore_tensors`` (the service's twin of ``restore_alone``'s
            call); the values are held for :meth:`check_held`."""
            client = dr.connect(service)
            t = time.perf_counter()
            out = client.restore_tensors(url, names, group=group, world_size=world_size, deadline=1800)
            seconds = time.perf_counter() - t
            self.held = out
            return seconds

        def check_held(self, digests) -> bool:
            """Whether the last restore's values match ``digests``; they are dropped. A call of
            its own, so a worker's check is outside every timed interval: it would otherwise
            take CPU from the workers still restoring (the processes share the machine's cores).
            The digests come with it for the same reason: a dict of 10^4-10^5 entries sent to
            each of 8 workers at the start took the driver ~0.1 s to serialize."""
            out, self.held = self.held, None
            return check(out, digests)

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
            return seconds, check({f"{n}/{rank}": p.numpy() for n, p in mine.items()}, digests)

        def clients(self, service, url, names, digests, threads, seconds):
            """``threads`` clients of this process, each registering one small tensor at a time
            through ``client.fetch`` for ``seconds`` (as a worker's threads would), after
            connecting: the registrations answered, the seconds they took, and whether every
            value checked out."""
            client = dr.connect(service)
            index = client.checkpoint(url)
            counts, bad = [0] * threads, []
            start = time.monotonic()
            stop = start + seconds

            def loop(i):
                while time.monotonic() < stop:
                    name = names[(i + threads * counts[i]) % len(names)]
                    [value] = client.fetch([dr.TensorRequest(index, name)], deadline=600)
                    if not check({name: value}, digests):
                        bad.append(name)
                    counts[i] += 1

            pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            return sum(counts), time.monotonic() - start, not bad

    return Worker
