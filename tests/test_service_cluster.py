"""The restore service on a three-node ``ray.cluster_utils.Cluster`` (head + two workers).

Workers are Ray actors placed on different nodes. The checkpoint lives in fake-gcs-server
behind a counting HTTP proxy (``benchmarks/latency_proxy.py``, no latency), so the bytes the
whole cluster read from storage are counted where they leave the bucket, whichever process read
them. Faults are real: a node removed (``Cluster.remove_node``) while its reads run, the
coordinator and a worker killed (``ray.kill``) while others wait, a second driver process
reusing a detached coordinator, and the CLI started as a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from checks import assert_bit_exact  # noqa: E402
from ray import cloudpickle  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from ray_fixtures import SESSIONS  # noqa: E402

import distrestore as dr  # noqa: E402
from distrestore.errors import ServiceExistsError, ServiceUnavailableError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from latency_proxy import start_proxy  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

MiB = 1 << 20


def make_tensors() -> dict:
    rng = np.random.default_rng(5)
    tensors = {
        "emb": rng.standard_normal((3000, 256)).astype(np.float32),  # 3 MB
        "w": rng.standard_normal((600, 512)).astype(np.float32),  # 1.2 MB
        "names": np.array([f"name-{i}".encode() for i in range(40)], dtype=object),
        "step": np.int64(77),
    }
    tensors.update({f"small/{i:02d}": np.full(5, i, np.int32) for i in range(30)})
    return tensors


TENSORS = make_tensors()
SIZE = {k: np.asarray(v).nbytes for k, v in TENSORS.items() if np.asarray(v).dtype != object}


class Proxy:
    """A counting proxy in front of fake-gcs-server: what the cluster read from the bucket."""

    def __init__(self, upstream: str, latency_ms: float = 0):
        self.proc, self.url = start_proxy(upstream.replace("http://", ""), latency_ms)

    def _get(self, what: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/__proxy_{what}", timeout=10) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self._get("reset")

    @property
    def bytes(self) -> int:
        return self._get("stats")["response_bytes"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def nodes(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def bucket(gcs_server, tmp_path_factory):
    """The checkpoint in fake-gcs-server; (url, counting proxy, storage options through it)."""
    d = tmp_path_factory.mktemp("service_ckpt")
    dr.save_tensors(str(d / "model"), TENSORS, num_shards=2)
    url = gcs_server.upload(d) + "/model"
    proxy = Proxy(gcs_server.endpoint)
    options = {**gcs_server.storage_options, "endpoint_url": proxy.url}
    yield url, proxy, options
    proxy.stop()


@pytest.fixture(scope="module")
def service(nodes, bucket):
    url, _, options = bucket
    client = dr.serve(url, name="cluster-suite", storage_options=options, chunk_bytes=MiB, min_piece_bytes=64 << 10)
    yield client
    client.shutdown()


@ray.remote(num_cpus=0)
class Worker:
    """A worker of a distributed job: connects to the service by name and restores."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def fetch(self, service: str, wants, group=None, world_size=None, path=None, options=None):
        client = dr.connect(service)
        index = client.checkpoint(path, storage_options=options)
        reqs = [dr.TensorRequest(index, name, region) for name, region in wants]
        return client.fetch(reqs, group=group, world_size=world_size, deadline=120)

    def initialize(self, service: str, path: str, parts: int, group=None, world_size=None, deadline=120):
        """``big/part5`` re-partitioned ``parts`` ways; the value, or the error and whether the
        variable kept its initial value."""
        client = dr.connect(service)
        store = dr.VariableStore()
        p = store.get_variable("new/big", shape=[100, 8], partitions=[parts, 1], initializer=-1.0)
        dr.init_from_checkpoint(client.checkpoint(path), {"big/part5": p}, store=store)
        try:
            client.initialize(store, group=group, world_size=world_size, deadline=deadline)
        except Exception as e:
            return {"error": type(e).__name__, "message": str(e), "untouched": bool((p.numpy() == -1).all())}
        return {"value": p.numpy()}


def gone(name: str, namespace: str | None = None) -> None:
    """Wait until no actor is registered under ``name`` (a killed one is released soon after)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        assert time.monotonic() < deadline, f"{name} is still registered"
        time.sleep(0.2)


def on(node: str):
    return Worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def rows(name: str, k: int, n: int):
    total = TENSORS[name].shape[0]
    return (slice(total * k // n, total * (k + 1) // n),)


def test_partitions_on_three_nodes_each_byte_read_once(nodes, bucket, service):
    _, proxy, _ = bucket
    proxy.reset()
    order = [nodes["head"], nodes["node_b"], nodes["node_c"]]
    workers = [on(n) for n in order]
    assert ray.get([w.node.remote() for w in workers]) == order
    wants = [[("emb", rows("emb", k, 3)), ("w", rows("w", k, 3))] for k in range(3)]
    got = ray.get([w.fetch.remote("cluster-suite", want, "thirds", 3) for w, want in zip(workers, wants)], timeout=180)
    for want, arrays in zip(wants, got):  # each worker got exactly its slices
        for (name, region), a in zip(want, arrays):
            assert_bit_exact(a, TENSORS[name][region], (name, region))
    needed = SIZE["emb"] + SIZE["w"]
    assert proxy.bytes == needed  # every byte once for the whole cluster, straight from the bucket
    s = service.stats()
    assert s["bytes_read"] == needed
    share = needed / 3
    for node in order:  # each node was handed its share, read on that node
        assert share <= s["bytes_served"][node] <= 1.05 * share, (node, s["bytes_served"])
        assert s["reads_by_node"][node] >= share
    # a late worker wants rows another node read: from the cache, sliced where they live
    late = on(nodes["node_b"])
    region = (slice(2100, 2200),)
    [a] = ray.get(late.fetch.remote("cluster-suite", [("emb", region)]), timeout=60)
    assert_bit_exact(a, TENSORS["emb"][region])
    assert proxy.bytes == needed  # no storage read
    s2 = service.stats()
    assert s2["bytes_from_cache"] > s["bytes_from_cache"]
    assert s2["bytes_served"][nodes["node_b"]] - s["bytes_served"][nodes["node_b"]] == 100 * 256 * 4
    for w in [*workers, late]:
        ray.kill(w)


def test_independent_workers_wanting_everything_read_it_once(nodes, bucket, service):
    _, proxy, _ = bucket
    service.release()
    proxy.reset()
    names = [n for n in TENSORS if n != "names"]
    workers = [on(n) for n in (nodes["head"], nodes["node_b"], nodes["node_c"])]
    got = ray.get([w.fetch.remote("cluster-suite", [(n, None) for n in names]) for w in workers], timeout=180)
    for arrays in got:
        for n, a in zip(names, arrays):
            assert_bit_exact(a, TENSORS[n], n)
    assert proxy.bytes == sum(SIZE[n] for n in names)
    for w in workers:
        ray.kill(w)


def test_variable_store_repartitioned_on_a_worker_node(nodes, fixtures_dir, service):
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    w = on(nodes["node_c"])
    out = ray.get(w.initialize.remote("cluster-suite", prefix, 4), timeout=120)
    assert_bit_exact(out["value"], dr.restore_tensors(prefix, ["big/part5"])["big/part5"])
    ray.kill(w)


def test_node_removed_mid_restore(nodes, bucket, service, gcs_server):
    """Reads done on a node that is then removed are read again elsewhere (lineage, owned by the
    coordinator), and reads under way on it run again elsewhere (retries, soft affinity)."""
    url, proxy, options = bucket
    service.release()
    cluster = SESSIONS.cluster
    extra = cluster.add_node(num_cpus=1, resources={"node_d": 1}, object_store_memory=100 * MiB)
    cluster.wait_for_nodes()
    slow = Proxy(gcs_server.endpoint, latency_ms=1500)
    try:
        node_d = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_d" in n["Resources"])
        names = ["emb", "w"]
        whole = [(n, None) for n in names]
        first = on(node_d)
        ray.get(first.fetch.remote("cluster-suite", whole), timeout=120)  # its pieces live on node_d
        assert service.stats()["reads_by_node"].get(node_d, 0) > 0
        slow_ckpt = {**options, "endpoint_url": slow.url}
        service.checkpoint(url, storage_options=slow_ckpt)  # opened now: the index is not slow
        doomed = on(node_d)
        pending = doomed.fetch.remote("cluster-suite", whole, path=url, options=slow_ckpt)
        deadline = time.monotonic() + 60
        while service.stats()["reads_in_flight"] == 0:  # its reads run on node_d now
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cluster.remove_node(extra)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(pending, timeout=60)
        survivor = on(nodes["head"])
        # the first checkpoint: cached, its objects lost with node_d, made again from lineage
        proxy.reset()
        for n, a in zip(names, ray.get(survivor.fetch.remote("cluster-suite", whole), timeout=180)):
            assert_bit_exact(a, TENSORS[n], n)
        assert proxy.bytes >= SIZE["emb"] + SIZE["w"]  # read again, from the bucket
        # the second: its reads were under way on node_d; retried elsewhere
        client = dr.connect("cluster-suite")
        index = client.checkpoint(url, storage_options=slow_ckpt)
        got = client.fetch([dr.TensorRequest(index, n) for n in names], deadline=180)
        for n, a in zip(names, got):
            assert_bit_exact(a, TENSORS[n], n)
        ray.kill(survivor)
    finally:
        slow.stop()


def test_killed_coordinator_fails_every_waiting_worker_at_once(nodes, fixtures_dir, bucket, gcs_server):
    """Workers waiting for their group to gather, and one waiting for slow reads, all fail with
    ``ServiceUnavailableError`` as soon as the coordinator dies, and nothing is assigned."""
    url, _, options = bucket
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    client = dr.serve(prefix, name="doomed")
    slow = Proxy(gcs_server.endpoint, latency_ms=3000)
    try:
        slow_options = {**options, "endpoint_url": slow.url}
        client.checkpoint(url, storage_options=slow_options)
        workers = [on(n) for n in (nodes["head"], nodes["node_b"], nodes["node_c"])]
        # a group of 4 with 3 members: they wait
        waiting = [w.initialize.remote("doomed", prefix, 3, "everyone", 4, 300) for w in workers]
        reading = on(nodes["node_b"])
        streaming = reading.fetch.remote("doomed", [("emb", None)], path=url, options=slow_options)
        deadline = time.monotonic() + 60
        while True:
            s = client.stats()
            if s["groups_gathering"].get("everyone", 0) == 3 and s["reads_in_flight"] > 0:
                break
            assert time.monotonic() < deadline, s
            time.sleep(0.1)
        t = time.monotonic()
        ray.kill(client.actor)
        results = ray.get(waiting, timeout=60)
        with pytest.raises(ServiceUnavailableError, match="'doomed'"):
            ray.get(streaming, timeout=60)
        assert time.monotonic() - t < 30  # at once, not at the group's 300 s timeout
        for r in results:
            assert r["error"] == "ServiceUnavailableError" and "'doomed'" in r["message"], r
            assert r["untouched"]  # nothing assigned
        with pytest.raises(ServiceUnavailableError):
            client.stats()
        for w in [*workers, reading]:
            ray.kill(w)
    finally:
        slow.stop()


def test_a_dead_worker_does_not_disturb_the_others(nodes, fixtures_dir):
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    client = dr.serve(prefix, name="survives")
    try:
        a, b = on(nodes["node_b"]), on(nodes["node_c"])
        ref = a.initialize.remote("survives", prefix, 2, "pair", 2)
        deadline = time.monotonic() + 60
        while client.stats()["groups_gathering"].get("pair", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ray.kill(a)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(ref, timeout=30)
        out = ray.get(b.initialize.remote("survives", prefix, 2, "pair", 2), timeout=120)
        assert_bit_exact(out["value"], dr.restore_tensors(prefix, ["big/part5"])["big/part5"])
        s = client.stats()
        assert s["registrations"] == 2 and s["answered"] == 2 and s["waiting"] == 0
        ray.kill(b)
    finally:
        client.shutdown()


def driver(script: str, timeout: float = 120) -> dict:
    """Run ``script`` as a separate Ray driver (another job) against the test cluster; its
    last stdout line is JSON."""
    env = {**os.environ, "RAY_ADDRESS": SESSIONS.cluster.address, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


JOB = """
import json, ray, distrestore as dr
ray.init(namespace="{job}", log_to_driver=False)
{how}
v = client.get_tensor("big/part5", (slice(5, 9),))
print(json.dumps({{"sum": float(v.sum()), "stats": client.stats()}}))
"""


def test_detached_service_outlives_its_job_and_serves_another(nodes, fixtures_dir):
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    serve = f'client = dr.serve({prefix!r}, name="kept", namespace="dr-shared", detached=True)'
    first = driver(JOB.format(job="job-one", how=serve))
    client = dr.connect("kept", namespace="dr-shared")  # the first job is gone; its service is not
    try:
        with pytest.raises(ServiceExistsError):
            dr.serve(prefix, name="kept", namespace="dr-shared")
        second = driver(JOB.format(job="job-two", how='client = dr.connect("kept", namespace="dr-shared")'))
        assert second["sum"] == first["sum"]
        assert second["stats"]["bytes_read"] == first["stats"]["bytes_read"] > 0  # from the cache
        assert second["stats"]["registrations"] == 2
    finally:
        client.shutdown()
    gone("kept", "dr-shared")
    with pytest.raises(ServiceUnavailableError, match="'kept' in namespace 'dr-shared'"):
        dr.connect("kept", namespace="dr-shared")


def test_cli_serve(nodes, fixtures_dir):
    prefix = str(fixtures_dir / "tf1_sharded" / "model.ckpt-7")
    env = {**os.environ, "RAY_ADDRESS": SESSIONS.cluster.address, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "distrestore", "serve", prefix, "--name", "from-cli", "--namespace", "dr-cli"]
    done = subprocess.run([*cmd, "--detached"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distrestore.connect('from-cli', namespace='dr-cli')" in done.stdout
    client = dr.connect("from-cli", namespace="dr-cli")
    expect = dr.restore_tensors(prefix, ["scope1/w"])["scope1/w"]
    assert_bit_exact(client.get_tensor("scope1/w"), expect)
    client.shutdown()

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = dr.connect("from-cli", namespace="dr-cli", timeout=120)
        assert_bit_exact(client.get_tensor("scope1/w"), expect)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    gone("from-cli", "dr-cli")


def test_example_on_three_nodes(nodes, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("partitioned_init", ROOT / "examples" / "partitioned_init.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--out", str(tmp_path), "--name", "example-in-tests"]) == 0
