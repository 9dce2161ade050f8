"""Ray sessions for the tests: one single-node session, one multi-node ``Cluster``, never both.

Starting Ray costs seconds here (about 4 s for one node, 7 s for three), so the single-node
session is started once and kept for every module that asks for it (``ray_local``), and shut
down at the end of the test session; the multi-node cluster (``ray_cluster``) lives for one
module. Ray allows one session per process, so each fixture shuts down the other kind first.
``tests/conftest.py`` loads this module as a pytest plugin, so every test module can ask for them.
Settings follow ``docs/testing.md`` (no auth token, no usage stats, a small object store,
``address="local"`` so a stray ``RAY_ADDRESS`` is never joined).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OBJECT_STORE_BYTES = 200 * 2**20


class _RaySessions:
    """Which Ray session this process runs: None, "local" or "cluster"."""

    def __init__(self):
        self.kind = None
        self.cluster = None
        self.finalizer = False

    def local(self):
        import ray

        if self.kind == "local" and ray.is_initialized():
            return
        self.stop()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=False,
        )
        self.kind = "local"

    def start_cluster(self, worker_resources):
        import ray
        from ray.cluster_utils import Cluster

        self.stop()
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20, "include_dashboard": False},
        )
        try:
            for res in worker_resources:
                cluster.add_node(num_cpus=1, resources=dict(res), object_store_memory=100 * 2**20)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
        except BaseException:
            cluster.shutdown()
            raise
        self.kind, self.cluster = "cluster", cluster
        return cluster

    def stop(self):
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        self.kind = self.cluster = None


SESSIONS = _RaySessions()


@pytest.fixture(scope="module")
def ray_local(request):
    """A single-node Ray (2 CPUs, 200 MiB object store) shared by every module that uses it."""
    pytest.importorskip("ray")
    SESSIONS.local()
    if not SESSIONS.finalizer:
        request.session.addfinalizer(SESSIONS.stop)
        SESSIONS.finalizer = True
    yield


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A head node and two worker nodes (1 CPU each; custom resources ``node_b`` and ``node_c``),
    for one module. Yields ``{"head": id, "node_b": id, "node_c": id}`` (Ray node ids)."""
    pytest.importorskip("ray")
    import ray

    SESSIONS.start_cluster([{"node_b": 1}, {"node_c": 1}])
    try:
        ids = {}
        for n in ray.nodes():
            if not n["Alive"]:
                continue
            res = n["Resources"]
            name = "node_b" if "node_b" in res else "node_c" if "node_c" in res else "head"
            ids[name] = n["NodeID"]
        assert set(ids) == {"head", "node_b", "node_c"}, ids
        yield ids
    finally:
        SESSIONS.stop()


def write_checkpoint(prefix: str, tensors: dict, num_shards: int = 1) -> str:
    """Write ``tensors`` as a V2 bundle (distrestore's writer; TF's SaveV2 where it is missing)."""
    try:
        from distrestore.writer import save_tensors
    except ImportError:
        tf = pytest.importorskip("tensorflow")
        names = sorted(tensors)
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(tensors[n]) for n in names],
        )
        return prefix
    return save_tensors(prefix, tensors, num_shards=num_shards)
