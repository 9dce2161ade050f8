"""memory: few_large streamed with ``iter_restore_tensors(max_inflight_bytes=B)``, a consumer
that checks and drops each array; bytes in flight counted around every ``Storage.readinto``."""

from __future__ import annotations

from .. import workloads
from ..workloads import MiB


def run(runner) -> None:
    man = runner.ensure_built("few_large")
    nb = man["bytes"]
    workloads.warm(man["prefix"])
    budgets = (32 * MiB, 256 * MiB)
    entries = [("python + numpy + distrestore imported (floor)", "noop", {})]
    label = "iter_restore_tensors, max_inflight_bytes={} MiB"
    entries += [(label.format(b // MiB), "dr_stream", {"budget": b}) for b in budgets]
    g = runner.group(
        "memory: streaming few_large under a byte budget",
        "few_large",
        entries,
        nbytes=nb,
        note="The consumer hashes each array (inside the timer) and drops it. Bytes in flight are counted by "
        "distrestore.storage.wrappers.CountingStorage around the storage.",
    )
    for b in budgets:
        row = g["rows"].get(label.format(b // MiB), {})
        if "runs" not in row:
            what = f"budget {b // MiB} MiB: bytes in flight ≤ budget"
            runner.target(what, None, "≤ budget", False, row.get("error", ""))
            continue
        mx = max(r["max_inflight"] for r in row["runs"])
        runner.target(
            f"budget {b // MiB} MiB: max bytes in flight (MiB)",
            round(mx / MiB, 1),
            f"≤ {b // MiB}",
            mx <= b,
            f"peak RSS {row['rss'] / MiB:.0f} MiB while restoring {nb / MiB:.0f} MiB",
        )
    runner.drop("few_large")
