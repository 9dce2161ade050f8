"""partitioned: 4 variables [10000, 2560] float32 stored as 5 row slices over 3 data files,
restored into new partitions and as a subset, against TF's ``RestoreV2`` with slice specs; the
bytes each case reads against the bytes it needs."""

from __future__ import annotations

from .. import workloads
from ..harness import have
from .common import FRESH_NOTE


def run(runner) -> None:
    if not have("tensorflow"):
        runner.notes.append("partitioned: skipped, writing sliced entries needs TensorFlow.")
        return
    man = runner.ensure_built("partitioned")
    workloads.warm(man["prefix"])
    sp = man["spec"]
    entries = []
    for case in workloads.PARTITION_CASES:
        entries.append((f"distrestore fetch, {case}", "dr_fetch", {"case": case}))
        if case == "subset":
            entries.append((f"distrestore fetch, {case}, verify=False", "dr_fetch", {"case": case, "verify": 0}))
        entries.append((f"TF RestoreV2 slice specs, {case}", "tf_fetch", {"case": case}))
    g = runner.group(
        f"partitioned: {sp['vars']} × [{sp['rows']}, {sp['cols']}] float32 stored as {sp['slices']} row slices "
        f"over {sp['shards']} data files, restored into new partitions",
        "partitioned",
        entries,
        refs={e[0]: "distrestore fetch, " + e[0].split(", ")[1] for e in entries},
        note="rows2/rows4: every variable as 2/4 row blocks (crossing the stored slice boundaries); cols2: as 2 "
        "column blocks, requested together; subset: one whole variable plus rows [0.3, 0.5) of another "
        "(with verify=True it reads the rest of the two stored slices those rows lie in, to check their "
        "CRC32C: docs/verification.md).",
    )
    for label, _, params in entries:
        if not label.startswith("distrestore"):
            continue
        case, verify = params["case"], params.get("verify", 1)
        row = g["rows"].get(label, {})
        what = f"{case}{'' if verify else ', verify=False'}: bytes read / bytes needed (plan; counted)"
        if "runs" not in row:
            runner.target(what, None, "1.0", False, row.get("error", ""))
            continue
        r0 = row["runs"][0]
        plan_ratio = r0["plan_bytes_to_read"] / r0["plan_bytes_needed"]
        real_ratio = r0["counted_data_bytes"] / r0["bytes_needed"]
        info = case == "subset" and verify
        runner.target(
            what,
            round(max(plan_ratio, real_ratio), 4),
            "(info: verify=True reads whole touched entries)" if info else "1.0",
            None if info else abs(plan_ratio - 1) < 1e-9 and abs(real_ratio - 1) < 1e-9,
            f"plan {r0['plan_bytes_to_read']:,} / {r0['plan_bytes_needed']:,}; counted "
            f"{r0['counted_data_bytes']:,} / {r0['bytes_needed']:,} bytes; {r0['plan_requests']} requests",
        )
    runner.group(
        "partitioned rows4, fresh process, unprimed",
        "partitioned",
        [
            ("distrestore fetch, rows4", "dr_fetch", {"case": "rows4"}),
            ("TF RestoreV2 slice specs, rows4", "tf_fetch", {"case": "rows4"}),
        ],
        reps=max(7, runner.reps),
        fresh=True,
        note=FRESH_NOTE,
    )
    runner.drop("partitioned")
