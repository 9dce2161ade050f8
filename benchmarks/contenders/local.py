"""Contenders on local files: the raw ceilings, distrestore (threads, streaming, regions, Ray) and
the RSS floor."""

from __future__ import annotations

import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..workloads import GiB, MiB, data_files, drop_cache, load, region_key
from .common import Timer, check, check_listing, hashes, lap


def noop(wdir, man, p):
    """Interpreter + numpy + distrestore imported: the RSS floor of a fresh process."""
    import numpy  # noqa: F401

    import distrestore  # noqa: F401

    t = Timer().start()
    t.stop()
    return t.result(seconds=0.0, check={"ok": True, "checked": 0})


def fresh_buffer(nbytes: int, memory: str):
    """A uint8 array of ``nbytes`` never touched: "anon", an anonymous private mapping without
    huge-page advice (the cheapest fresh memory there is on most kernels); "numpy",
    ``np.empty`` (numpy advises huge pages from 4 MiB on); "distrestore", what a restore gets."""
    import numpy as np

    if memory == "numpy":
        return np.empty(nbytes, np.uint8)
    if memory == "distrestore":
        from distrestore.memory import DestinationMemory

        return DestinationMemory().empty(nbytes)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)


def raw_local(wdir, man, p):
    """Ceiling: every data file read by ``workers`` threads in ``chunk`` pieces into fresh
    buffers (``memory``: see :func:`fresh_buffer`), no checksums. ``method`` "preadv" (the
    kernel copies), or "mmap": each piece copied (numpy, GIL released) out of an
    ``mmap(MAP_POPULATE)`` of the file, the way distrestore's C kernel reads."""
    import numpy as np

    import distrestore as dr

    workers, chunk = int(p.get("workers", 2)), int(p.get("chunk", 16 * MiB))
    files = data_files(man["prefix"])
    sizes = {f: os.path.getsize(f) for f in files}
    if p.get("cold"):
        drop_cache(man["prefix"])

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
            buf[a:b] = src
            del src

    read = copy_mapped if p.get("method") == "mmap" else read_preadv
    t = Timer().start()
    bufs, fds, tasks = {}, [], []
    for f in files:
        bufs[f] = buf = fresh_buffer(sizes[f], p.get("memory", "anon"))
        fd = os.open(f, os.O_RDONLY)
        fds.append(fd)
        tasks += [(fd, buf, a, min(sizes[f], a + chunk)) for a in range(0, sizes[f], chunk)]
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(read, tasks))
    t.stop()
    for fd in fds:
        os.close(fd)
    idx = dr.open_checkpoint(man["prefix"])
    outs = (
        (n, memoryview(bufs[idx.data_file(e.shard_id)])[e.offset : e.offset + e.size]) for n, e in idx.entries.items()
    )
    return t.result(bytes=sum(sizes.values()), check=check(outs, hashes(wdir)))


def dr_threads(wdir, man, p):
    """distrestore: ``restore_tensors(prefix)`` with the default thread executor, CRC32C
    verified (``verify``: 0 to skip it; ``workers``: threads; ``twice``: a second restore in the
    same process, by wall time)."""
    import distrestore as dr

    executor = dr.ThreadExecutor(workers=int(p["workers"])) if "workers" in p else "threads"
    verify = bool(p.get("verify", True))
    if p.get("cold"):
        drop_cache(man["prefix"])
    t = Timer().start()
    out = dr.restore_tensors(man["prefix"], verify=verify, executor=executor)
    t.stop()
    extra = {}
    if p.get("twice"):
        del out
        extra["second_restore"], out = lap(lambda: dr.restore_tensors(man["prefix"], verify=verify, executor=executor))
    return t.result(check=check(out.items(), hashes(wdir)), **extra)


def prime(nbytes: int) -> None:
    """Touch and free 1.5 x ``nbytes`` (0.5-2 GiB): see ``harness.Runner.prime_memory``."""
    import numpy as np

    a = np.ones(int(min(2 * GiB, max(GiB // 2, 1.5 * nbytes))) // 8, dtype=np.float64)
    del a


def dr_ray(wdir, man, p):
    """distrestore on Ray, one node; ray.init is never timed. ``route`` "driver" (the default
    executor, what the target is judged on): local files are read in the driver's process, the
    time is the first restore after ray.init. ``route`` "actors": read actors on the node write
    into the driver's shared-memory arena; ``pool`` "started": ``RayExecutor.start()`` untimed
    (actors up, as in a service), or "cold": the first restore starts them. A second restore in
    the same process is timed too."""
    import ray

    import distrestore as dr
    from distrestore.ray import RayExecutor

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
        # memory priming has expired by now: let it settle, then prime again.
        time.sleep(float(p.get("settle", 3)))
        if p.get("prime"):
            prime(man["bytes"])
        t = Timer().start()
        out = dr.restore_tensors(man["prefix"], executor=ex)
        t.stop()
        ok = check(out.items(), hashes(wdir))
        del out
        second, out = lap(lambda: dr.restore_tensors(man["prefix"], executor=ex))
        ok["ok"] = ok["ok"] and check(out.items(), hashes(wdir))["ok"]
        del out
    finally:
        ray.shutdown()
    return t.result(check=ok, second_restore=second)


def dr_stream(wdir, man, p):
    """distrestore streaming under a byte budget: ``iter_restore_tensors(max_inflight_bytes=B)``,
    a consumer that checks each array and drops it. Storage-level bytes in flight are counted."""
    import distrestore as dr
    from distrestore.storage.wrappers import CountingStorage

    from ..workloads import digest

    budget = int(p["budget"])
    expected = hashes(wdir)  # the consumer checks inside the loop
    storage = CountingStorage()
    idx = dr.open_checkpoint(man["prefix"], storage=storage)
    storage.reset()
    bad, n = [], 0
    t = Timer().start()
    for name, arr in dr.iter_restore_tensors(idx, max_inflight_bytes=budget):
        n += 1
        if digest(arr) != expected[name]:
            bad.append(name)
        del arr
    t.stop()
    missing = len(expected) - n
    return t.result(
        budget=budget,
        max_inflight=storage.max_inflight_bytes,
        data_bytes=storage.bytes_read_of(".data-"),
        check={"ok": not bad and not missing, "checked": n, "bad": bad[:5], "missing": missing},
    )


def index_dr(wdir, man, p):
    import distrestore as dr

    t = Timer().start()
    v = dr.list_variables(man["prefix"])
    t.stop()
    return t.result(check=check_listing(v, wdir))


def dr_fetch(wdir, man, p):
    """``distrestore.fetch`` of regions (a new partitioning or a subset) with the bytes read
    counted; ``verify``: 0 reads only the bytes the regions need (no checksum can be checked)."""
    import distrestore as dr
    from distrestore.storage.wrappers import CountingStorage

    case = man["cases"][p["case"]]
    verify = bool(p.get("verify", True))
    storage = CountingStorage()
    t = Timer().start()
    idx = dr.open_checkpoint(man["prefix"], storage=storage)
    reqs = [dr.TensorRequest(idx, name, _region(r)) for name, r in case]
    arrs = dr.fetch(reqs, verify=verify)
    t.stop()
    plan = dr.plan_requests(reqs, verify=verify)
    regions = load(wdir, "hashes")["regions"]
    keys = [region_key(n, r) for n, r in case]
    return t.result(
        bytes_needed=sum(regions[k][1] for k in keys),
        plan_bytes_to_read=plan.bytes_to_read,
        plan_bytes_needed=plan.bytes_needed,
        counted_data_bytes=storage.bytes_read_of(".data-"),
        plan_requests=len(plan.requests),
        check=check(zip(keys, arrs), {k: regions[k][0] for k in keys}),
    )


def _region(r):
    return None if r is None else tuple(slice(a, b) for a, b in r)
