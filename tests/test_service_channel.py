"""How a worker process talks to the restore service (single-node Ray session): concurrent
registrations from its threads travel together, small pieces come back by value with the answer,
and a registration is answered even when the cache evicts its pieces at once.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from checks import assert_bit_exact  # noqa: E402
from ray_fixtures import write_checkpoint  # noqa: E402

import distrestore as dr  # noqa: E402
from distrestore.coordination.ranges import needed_ranges  # noqa: E402
from distrestore.coordination.state import Registration  # noqa: E402
from distrestore.coordination.wire import pack  # noqa: E402
from distrestore.plan import PlanOptions, build_plan  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(11)
    tensors = {f"v/{i:03d}": rng.standard_normal(32).astype(np.float32) for i in range(200)}
    tensors["big"] = rng.standard_normal((512, 256)).astype(np.float32)  # 512 KiB: by reference
    prefix = write_checkpoint(str(tmp_path_factory.mktemp("channel") / "model"), tensors, num_shards=2)
    return prefix, tensors


@pytest.fixture
def service(checkpoint):
    prefix, _ = checkpoint
    client = dr.serve(prefix, name="channel-suite", cache_bytes=64 << 20)
    yield client
    client.shutdown()


def registration(client, names) -> Registration:
    index = client.checkpoint()
    plan = build_plan([dr.TensorRequest(index, n) for n in names], PlanOptions(workers=1, verify=False))
    fids = client._file_ids_for({f: index.storage for f in index.data_files()})
    return Registration(needed_ranges(plan, fids), ray.get_runtime_context().get_node_id())


def test_threads_of_one_process_register_together(service, checkpoint):
    _, tensors = checkpoint
    index = service.checkpoint()
    names = sorted(n for n in tensors if n.startswith("v/"))
    start = threading.Barrier(32)
    errors, got = [], {}

    def worker(k: int) -> None:
        try:
            start.wait()
            for name in names[k::32]:
                [got[name]] = service.fetch([dr.TensorRequest(index, name)])
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for name in names:
        assert_bit_exact(got[name], tensors[name], name)
    s = service.stats()
    assert s["registrations"] == len(names) and s["answered"] == len(names)
    assert s["calls"]["register_many"] < len(names)  # several registrations per actor call


def test_small_pieces_come_back_with_the_answer(service, checkpoint):
    _, tensors = checkpoint
    reg = registration(service, ["v/007", "big"])
    [(token, reply)] = ray.get(service.actor.register_many.remote([pack(reg, 30.0)]))
    while not reply.done:  # the reads take their time: follow it
        [(token, reply)] = ray.get(service.actor.poll.remote([token]))
    [(token, reply)] = ray.get(service.actor.register_many.remote([pack(reg, 30.0)]))  # now cached
    assert reply.done and token >= 0
    kinds = {type(obj) for obj in reply.refs}
    assert kinds == {np.ndarray, ray.ObjectRef}  # the small piece by value, the big one by reference
    assert sum(int(e) - int(s) for s, e in zip(reply.starts, reply.ends)) >= tensors["big"].nbytes


def test_answered_although_the_cache_evicts_its_pieces_at_once(checkpoint):
    prefix, tensors = checkpoint
    client = dr.serve(prefix, name="channel-no-cache", cache_bytes=0)
    try:
        for _ in range(2):  # read, evicted when answered; read again
            got = client.fetch([dr.TensorRequest(client.checkpoint(), n) for n in ("v/001", "big")], deadline=60)
            assert_bit_exact(got[0], tensors["v/001"])
            assert_bit_exact(got[1], tensors["big"])
        s = client.stats()
        assert s["cache_bytes"] == 0 and s["bytes_read"] >= 2 * tensors["big"].nbytes
    finally:
        client.shutdown()
