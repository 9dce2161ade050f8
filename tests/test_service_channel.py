"""How a worker process talks to the restore service (single-node Ray session): concurrent
registrations from its threads travel together, small pieces come back by value with the answer,
and a registration is answered even when the cache evicts its pieces at once. The channel holds
no Ray object once a restore returned (so ``ray.shutdown()`` right after one is safe), stops
following what its caller gave up, and a client outlives the Ray session it was made in.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from checks import assert_bit_exact  # noqa: E402
from ray_fixtures import write_checkpoint  # noqa: E402

import distrestore as dr  # noqa: E402
import distrestore.ray.channel as channel_module  # noqa: E402
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


def live_object_refs() -> list:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, ray.ObjectRef)]


def test_no_ray_object_is_held_once_a_fetch_returned(service, checkpoint, monkeypatch):
    """Ray's core worker ends the process (exit status 1, silently) when a Ray object is released
    while ``ray.shutdown()`` runs. The channel's thread waits a while for more work before it
    ends; were it to hold the objects it was answered with meanwhile, a ``ray.shutdown()`` right
    after a restore would end the process as that thread let go of them. Here it waits for a
    minute, so holding them could not pass for having been about to let go."""
    monkeypatch.setattr(channel_module, "LINGER_SECONDS", 60.0)
    _, tensors = checkpoint
    index = service.checkpoint()
    before = len(live_object_refs())
    got = service.fetch([dr.TensorRequest(index, "big"), dr.TensorRequest(index, "v/003")])
    assert_bit_exact(got[0], tensors["big"])
    assert_bit_exact(got[1], tensors["v/003"])
    del got
    assert [t.name for t in threading.enumerate()].count("distrestore-service-channel") >= 1  # waiting for more
    give_up = time.monotonic() + 30  # the answer's last hand-over may still be finishing
    while len(live_object_refs()) > before and time.monotonic() < give_up:
        time.sleep(0.05)
    assert len(live_object_refs()) == before


def test_a_registration_given_up_is_no_longer_followed(service, checkpoint, monkeypatch):
    """A registration whose caller gave up (its deadline passed, or it failed placing what came)
    is followed no more: the channel does not poll the coordinator for it until the
    coordinator's own deadline. Here one member of a group of two waits for a second that never
    registers, the polls answered every 0.2 s."""
    monkeypatch.setattr(channel_module, "POLL_SECONDS", 0.2)
    reg = registration(service, ["v/001"])._replace(group="waits-for-ever", world_size=2)
    ticket = channel_module.channel(service.actor, lambda e: e).register(reg, 60.0)

    def polls() -> int:
        return service.stats()["calls"].get("poll", 0)

    give_up = time.monotonic() + 30
    while polls() < 3 and time.monotonic() < give_up:  # followed: polled again and again
        time.sleep(0.1)
    assert polls() >= 3
    ticket.abandon()
    time.sleep(1.0)  # the poll on its way when it was given up comes back
    after = polls()
    time.sleep(1.0)  # five more polls, were it still followed
    assert polls() - after <= 1  # one may have left as it was given up, and arrive late on a busy machine


AFTER_SHUTDOWN = """
import json, sys, time
import ray, distrestore as dr
out = {}
init = dict(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
ray.init(**init)
client = dr.serve(sys.argv[1], name="after-shutdown")
index = client.checkpoint()
client.fetch([dr.TensorRequest(index, "big")])
ray.shutdown()  # while the channel's thread still waits for more
for step in ("shut down", "another session"):
    t = time.monotonic()
    try:
        client.fetch([dr.TensorRequest(index, "big")], deadline=30)
        out[step] = ["returned"]
    except Exception as e:
        out[step] = [type(e).__name__, round(time.monotonic() - t, 1), ray.is_initialized()]
    if not ray.is_initialized():
        ray.init(**init)
time.sleep(2 * dr.ray.channel.LINGER_SECONDS)  # the first session's channel thread has ended
ray.shutdown()
print(json.dumps(out))
"""


def test_a_client_after_ray_shutdown_fails_at_once_and_starts_no_ray(checkpoint):
    """In a process of its own (it shuts Ray down): shut down right after a restore, the process
    lives on; a restore through the service then fails at once and starts no Ray of its own
    (an actor call would, through Ray's auto-init); in the next session the client looks the
    service up again rather than calling a handle of the last one."""
    prefix, _ = checkpoint
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", AFTER_SHUTDOWN, prefix], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    (kind, seconds, ray_started) = out["shut down"]
    assert (kind, ray_started) == ("RayNotInitializedError", False) and seconds < 5
    assert out["another session"][0] == "ServiceUnavailableError" and out["another session"][1] < 5
