"""many_small: 200,000 x 1 KiB float32 (205 MB) in one data file, local and warm: primed, fresh
process (unprimed), TF's batch restore once, and parsing the index."""

from __future__ import annotations

from .. import workloads
from .common import fresh_group, memory_target, raw_configs


def run(runner) -> None:
    man = runner.ensure_built("many_small")
    nb = man["bytes"]
    n = man["count"]
    workloads.warm(man["prefix"])
    raw = runner.calibrate("many_small warm", "many_small", raw_configs((2, 4)), runs=2)
    ceiling = f"raw ceiling ({raw[0]}, fresh anonymous memory)"
    entries = [
        (ceiling, "raw_local", raw[2]),
        ("TF get_tensor loop", "tf_loop", {}),
        ("distrestore threads", "dr_threads", {}),
    ]
    g = runner.group(f"many_small ({n:,} × 1 KiB), local, warm, primed memory", "many_small", entries, nbytes=nb)
    rw, loop, dr_ = (g["rows"].get(e[0], {}) for e in entries)
    runner.speedup_target("many_small: distrestore / raw preadv ceiling (throughput)", rw, dr_, 0.6)
    runner.speedup_target("many_small: distrestore vs TF get_tensor loop (speed-up; first round: ≥ 3)", loop, dr_, 9)
    memory_target(runner, "many_small", dr_, nb)

    fresh_group(runner, "many_small", f"many_small ({n:,} × 1 KiB), fresh process, unprimed", nb)

    # TF's batch restore takes ~17 s here: one run, for the record
    runner.group(
        f"many_small ({n:,} × 1 KiB): TF RestoreV2 batch, one run (info)",
        "many_small",
        [("TF RestoreV2 batch", "tf_batch", {}), ("distrestore threads", "dr_threads", {})],
        nbytes=nb,
        reps=1,
    )

    g = runner.group(
        f"index parsing, many_small ({n:,} entries)",
        "many_small",
        [("tf.train.list_variables", "index_tf", {}), ("dr.list_variables", "index_dr", {})],
        refs={"tf.train.list_variables": "dr.list_variables", "dr.list_variables": "dr.list_variables"},
    )
    a, b = g["rows"].get("tf.train.list_variables", {}), g["rows"].get("dr.list_variables", {})
    runner.speedup_target(
        "index parsing: dr.list_variables vs tf.train.list_variables (speed-up; first round: ≥ 3)", a, b, 12
    )
    runner.drop("many_small")
