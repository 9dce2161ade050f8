"""few_large: 16 x 64 MiB + 5,000 x 1 KiB float32 (1.08 GB) in one data file, local: warm
(primed), fresh process (unprimed), cold, and the Ray executor against the thread executor."""

from __future__ import annotations

from .. import workloads
from ..harness import have, ratio
from .common import fresh_group, memory_target, raw_configs


def run(runner) -> None:
    man = runner.ensure_built("few_large")
    nb = man["bytes"]
    workloads.warm(man["prefix"])
    raw = runner.calibrate("few_large warm", "few_large", raw_configs(), runs=2)
    threads = raw[0].split(", ")[-1]
    labels = {
        "raw": f"raw ceiling ({raw[0]}, fresh anonymous memory)",
        "tf": "TF get_tensor loop",
        "batch": "TF RestoreV2 batch",
        "dr": "distrestore threads",
        "noverify": "distrestore threads, verify=False (info: CRC32C cost)",
        "mapped": f"raw mapped copy ({threads}, fresh anonymous memory, no CRC)",
        "numpy": f"raw preadv ({threads}) into np.empty (numpy's huge-page advice; info)",
    }
    entries = [
        (labels["raw"], "raw_local", raw[2]),
        (labels["tf"], "tf_loop", {}),
        (labels["batch"], "tf_batch", {}),
        (labels["dr"], "dr_threads", {}),
        (labels["noverify"], "dr_threads", {"verify": 0}),
        (labels["mapped"], "raw_local", dict(raw[2], method="mmap")),
        (labels["numpy"], "raw_local", dict(raw[2], memory="numpy")),
    ]
    g = runner.group(
        "few_large, local, warm page cache, primed memory",
        "few_large",
        entries,
        nbytes=nb,
        reps=7,  # the most watched group
        note="Files read once before the group; CRC32C verified by distrestore; memory primed before each child.",
    )
    rows = {k: g["rows"].get(v, {}) for k, v in labels.items()}
    runner.speedup_target("few_large warm: distrestore / raw ceiling (throughput)", rows["raw"], rows["dr"], 0.9)
    runner.speedup_target("few_large warm: distrestore vs TF get_tensor loop (speed-up)", rows["tf"], rows["dr"], 1.8)
    runner.speedup_target(
        "few_large warm: distrestore / raw mapped-copy ceiling (throughput; the copy distrestore's C kernel "
        "makes, without checksums)",
        rows["mapped"],
        rows["dr"],
        0.95,
    )
    memory_target(runner, "few_large", rows["dr"], nb)

    numpy = ("raw preadv, 2 threads, np.empty (numpy's huge-page advice; info)", "raw_local")
    fresh_group(
        runner,
        "few_large",
        "few_large, local, warm page cache, fresh process, unprimed",
        nb,
        tf_need=1.8,
        raw_need=0.9,
        extra=[(*numpy, {"workers": 2, "memory": "numpy"})],
    )

    cold = [
        (labels["raw"], "raw_local", dict(raw[2], cold=1)),
        (labels["tf"], "tf_loop", {"cold": 1}),
        (labels["dr"], "dr_threads", {"cold": 1}),
    ]
    g = runner.group(
        "few_large, local, cold (POSIX_FADV_DONTNEED before each run)",
        "few_large",
        cold,
        nbytes=nb,
        note="Each child calls posix_fadvise(DONTNEED) on the data and index files right before its timer "
        "starts (this VM's disk is itself host-cached).",
    )
    runner.speedup_target(
        "few_large cold: distrestore / raw ceiling (throughput)",
        g["rows"].get(labels["raw"], {}),
        g["rows"].get(labels["dr"], {}),
        None,
        info="(info)",
    )
    run_ray(runner, nb)
    if "memory" not in runner.args.workloads:
        runner.drop("few_large")


def run_ray(runner, nb: int) -> None:
    if not have("distrestore.ray.executor"):
        runner.target("Ray 1 node: ray time / threads time", None, "≤ 1.3", None, "not measured: ray does not import")
        return
    # its own group: a Ray session's exit leaves the machine busy for a second or two, which would
    # bias whichever contender runs next (hence also the pause after each Ray run)
    prime = {"prime": 0 if runner.args.no_prime else 1, "settle": 0.5 if runner.short else 3}
    default = "distrestore ray (1 node), executor='ray'"
    started = "distrestore ray, read actors + shared memory, pool started (info)"
    cold = "distrestore ray, read actors, first restore (info)"
    entries = [
        ("distrestore threads", "dr_threads", {"twice": 1}),
        (default, "dr_ray", prime),
        (started, "dr_ray", {"route": "actors", "pool": "started", **prime}),
        (cold, "dr_ray", {"route": "actors", "pool": "cold", **prime}),
    ]
    g = runner.group(
        "Ray executor vs thread executor, few_large, warm",
        "few_large",
        entries,
        nbytes=nb,
        reps=3,
        pause_after={"dr_ray": 5},
        note="Ray: `ray.init(address='local', num_cpus=2, object_store_memory=2 GiB, include_dashboard=False)` "
        "untimed, then 3 s for the new cluster's processes to start (as a running cluster's would have) and "
        "the memory primer again, untimed; the time is the first restore after that. executor='ray' is "
        "`RayExecutor()`: local files are on the driver's node, so the driver reads them itself. 'read "
        "actors' is `RayExecutor(local_reads='actors')`: actors on the node write into the driver's arrays "
        "in a /dev/shm arena; 'pool started': `.start()` untimed (actors up, as in a service); 'first "
        "restore': the restore starts them. A second restore in the same process is shown under 'extra' "
        "(for threads as well). RSS and CPU s are the driver's only. Each Ray run is followed by a 5 s pause.",
    )
    th, ray_, actors, first = (g["rows"].get(k, {}) for k in ("distrestore threads", default, started, cold))
    r = ratio(ray_, th)  # ray's time / the thread executor's
    runner.target(
        f"Ray 1 node: ray time / threads time ({nb / 1e9:.2f} GB, executor='ray', 1st restore after ray.init)",
        r,
        "≤ 1.3",
        None if r is None else r <= 1.3,
    )
    what = "Ray 1 node (info): read actors + shared memory, pool started / threads"
    runner.target(what, ratio(actors, th), "(info)", None)
    runner.target(
        "Ray 1 node (info): read actors, 1st restore after ray.init (actor start-up included) / threads",
        ratio(first, th),
        "(info)",
        None,
    )
