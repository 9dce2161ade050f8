"""N workers on N nodes initialize a partitioned model through the distrestore restore service.

Each worker (a Ray actor, one per node) builds the model's variables in a ``VariableStore``,
partitioned N ways along the first axis, maps *its own part* of each onto the checkpoint with
``init_from_checkpoint`` (the checkpoint may be partitioned differently, or not at all), and
initializes through the service: the coordinator plans the N workers together, reads each byte
of the checkpoint from storage once for the whole cluster, on the node that needs it, and each
worker receives only its part. The driver then checks every part against the checkpoint.

    python examples/partitioned_init.py [CKPT] [--workers N] [--storage-options JSON]

Without CKPT it writes a demo checkpoint first (``--out DIR``, a directory every node can read).
As a Ray job (``ray job submit -- python examples/partitioned_init.py s3://bucket/ckpt``, or the
RayJob in ``deploy/kuberay/rayjob-service.yaml``) it joins the job's cluster; run by hand it
joins ``RAY_ADDRESS``, or starts a local Ray. Exit code 0: every part bit-exact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import distrestore as dr


def write_demo(directory: str) -> str:
    """A demo checkpoint: two big embedding tables, a dense layer, a vocabulary, a step."""
    rng = np.random.default_rng(0)
    tensors = {
        "model/embedding": rng.standard_normal((6000, 128)).astype(np.float32),
        "model/softmax_w": rng.standard_normal((3000, 256)).astype(np.float32),
        "model/dense/kernel": rng.standard_normal((256, 64)).astype(np.float32),
        "model/dense/bias": rng.standard_normal(64).astype(np.float32),
        "vocab": np.array([f"token_{i}".encode() for i in range(1000)], dtype=object),
        "global_step": np.int64(1234),
    }
    return dr.save_tensors(os.path.join(directory, "model.ckpt"), tensors, num_shards=3)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@ray.remote(num_cpus=0)
class Worker:
    """One worker of the job: its model part, initialized through the service."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def initialize(self, service: str, namespace: str | None, ckpt: str, variables: dict, group: str) -> dict:
        client = dr.connect(service, namespace)  # found by name: nothing but the name travels
        index = client.checkpoint(ckpt)  # read once by the service, shared through the object store
        store = dr.VariableStore()
        mine = {}
        for name, shape in variables.items():
            parts = store.get_variable(name, shape=shape, partitions=[self.world_size] + [1] * (len(shape) - 1))
            mine[name] = parts.parts[self.rank]  # this worker's part of every partitioned variable
        dr.init_from_checkpoint(index, {name: [part] for name, part in mine.items()}, store=store)
        t = time.perf_counter()
        client.initialize(store, group=group, world_size=self.world_size)  # all workers planned together
        seconds = time.perf_counter() - t
        return {
            "rank": self.rank,
            "node": ray.get_runtime_context().get_node_id(),
            "seconds": seconds,
            "parts": {name: [list(part.offset), list(part.shape), digest(part.numpy())] for name, part in mine.items()},
        }


def cpu_nodes() -> list[str]:
    """Alive nodes with CPUs (head nodes with ``num-cpus: 0`` keep the driver and the
    coordinator, not workers), or every alive node if none has any."""
    alive = [x for x in ray.nodes() if x.get("Alive")]
    return [x["NodeID"] for x in alive if x.get("Resources", {}).get("CPU", 0) > 0] or [x["NodeID"] for x in alive]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="checkpoint prefix or directory (default: write a demo one)")
    ap.add_argument("--workers", type=int, default=0, help="workers (default: one per node with CPUs)")
    ap.add_argument("--storage-options", help="fsspec storage options as JSON")
    ap.add_argument("--out", help="where the demo checkpoint goes (default: a temporary directory)")
    ap.add_argument("--name", default="distrestore-example", help="the service's name")
    ap.add_argument("--min-size", type=int, default=64, help="variables with fewer rows are not partitioned")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)  # a job's driver: join the job's cluster
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ckpt = args.checkpoint or write_demo(args.out or tempfile.mkdtemp(prefix="distrestore-example-"))
    options = json.loads(args.storage_options) if args.storage_options else None
    nodes = cpu_nodes()
    n = args.workers or len(nodes)
    client = dr.serve(ckpt, name=args.name, storage_options=options)  # lives as long as this driver
    try:
        index = client.checkpoint()
        variables = {
            name: list(shape)
            for name, shape in index.shape_map().items()
            if len(shape) >= 1 and shape[0] >= max(args.min_size, n) and index.entry(name).dtype.fixed_width
        }
        print(f"{n} workers initialize {len(variables)} partitioned variables from {index.prefix}")
        workers = [
            Worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(rank, n)
            for rank, node in enumerate(nodes[i % len(nodes)] for i in range(n))
        ]
        t = time.perf_counter()
        results = ray.get([w.initialize.remote(args.name, None, index.prefix, variables, "init") for w in workers])
        wall = time.perf_counter() - t
        stats = client.stats()
        ok = True
        for r in results:  # every part against the checkpoint, read again from the service's cache
            for name, (offset, shape, got) in r["parts"].items():
                region = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                if digest(client.get_tensor(name, region)) != got:
                    print(f"MISMATCH: worker {r['rank']}, {name} rows {offset[0]}..{offset[0] + shape[0]}")
                    ok = False
        size = sum(index.entry(name).size for name in variables)
        print(
            f"{'every part bit-exact' if ok else 'FAILED'} in {wall:.2f} s; storage bytes read "
            f"{stats['bytes_read']:,} for {size:,} bytes of variables ({stats['requests']} requests); "
            f"bytes served per node: {sorted(stats['bytes_served'].values())}"
        )
        for w in workers:
            ray.kill(w)
    finally:
        client.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
