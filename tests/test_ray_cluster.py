"""The Ray executor on a three-node ``ray.cluster_utils.Cluster`` (head + two workers, one CPU
each, custom resources ``node_b``/``node_c``): reads really run on several nodes, placement
options put them where asked, and values stay bit-exact.

All nodes share this machine's file system, so local checkpoint paths are readable everywhere
(on a real cluster that takes a shared file system or an object store).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fixtures.digest import value_digest  # noqa: E402
from ray_fixtures import write_checkpoint  # noqa: E402

from distrestore.execute.threads import ThreadExecutor  # noqa: E402
from distrestore.ray.executor import RayExecutor  # noqa: E402
from distrestore.restore import restore_tensors  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(11)
    tensors = {f"layer_{i}/w": rng.standard_normal((256, 512), dtype=np.float32) for i in range(6)}
    tensors.update({f"layer_{i}/b": np.arange(512, dtype=np.int32) * i for i in range(6)})
    tensors["names"] = np.array([b"a", b"bb", b""], dtype=object)
    prefix = str(tmp_path_factory.mktemp("ray_cluster") / "model")
    write_checkpoint(prefix, tensors, num_shards=3)
    return prefix, tensors


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and value_digest(a) == value_digest(b)


def check(out, tensors):
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert same(out[k], v), k


def test_spread_reads_on_every_node(ray_cluster, checkpoint):
    prefix, tensors = checkpoint
    with RayExecutor(nodes="spread", target_task_bytes=128 * 1024) as ex:
        out = restore_tensors(prefix, executor=ex)
        check(out, tensors)
        s = ex.stats
        assert set(s.worker_nodes) == set(ray_cluster.values())
        assert set(s.nodes) == set(ray_cluster.values())  # every node read something
        assert sum(s.bytes_by_node.values()) == s.bytes_read
        reference = restore_tensors(prefix, executor=ThreadExecutor())
        assert all(same(out[k], reference[k]) for k in reference)


def test_node_list_places_every_read(ray_cluster, checkpoint):
    prefix, tensors = checkpoint
    with RayExecutor(nodes=[ray_cluster["node_b"]], target_task_bytes=256 * 1024) as ex:
        check(restore_tensors(prefix, executor=ex), tensors)
        assert ex.stats.nodes == [ray_cluster["node_b"]]
        assert ex.stats.tasks > 1


def test_custom_resources_select_nodes(ray_cluster, checkpoint):
    prefix, tensors = checkpoint
    with RayExecutor(nodes="spread", resources={"node_c": 0.5}, target_task_bytes=256 * 1024) as ex:
        check(restore_tensors(prefix, executor=ex), tensors)
        assert ex.stats.nodes == [ray_cluster["node_c"]]
        assert ex.stats.worker_nodes == [ray_cluster["node_c"]] * ex.stats.workers


def test_local_files_default_to_the_driver_node(ray_cluster, checkpoint):
    prefix, tensors = checkpoint
    with RayExecutor(local_reads="actors", target_task_bytes=256 * 1024) as ex:
        check(restore_tensors(prefix, executor=ex), tensors)
        assert ex.stats.nodes == [ray_cluster["head"]]


def test_tf_fixture_over_the_cluster(ray_cluster, fixtures_dir):
    d = fixtures_dir / "tf1_sharded"
    exp = json.loads((d / "expected.json").read_text())
    with RayExecutor(nodes="spread", target_task_bytes=1) as ex:  # one request per task
        out = restore_tensors(str(d / exp["prefix"]), executor=ex)
        assert {k: value_digest(v) for k, v in out.items()} == {k: t["sha256"] for k, t in exp["tensors"].items()}
        assert len(ex.stats.nodes) >= 2
