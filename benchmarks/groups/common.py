"""What the workloads' groups share: the raw ceiling's configurations, the memory target, and the
fresh-process row."""

from __future__ import annotations

from ..harness import ratio

FRESH_NOTE = (
    "Fresh process, unprimed: no memory primer; a settle pause before each child, so the memory the "
    "previous one freed has been handed back to the host, as for a job that starts on an idle machine; "
    "the order of the contenders reversed every other round. CPU s are user / system."
)


def raw_configs(workers=(2, 4, 8), **params) -> list[tuple[str, str, dict]]:
    return [(f"raw preadv, {w} threads", "raw_local", {"workers": w, **params}) for w in workers]


def memory_target(runner, what: str, row: dict, nbytes: int) -> None:
    """Peak RSS of a restore against 1.1 x the bytes restored + 200 MB (issue I; the first
    round's bound was 1.2 x + 300 MB). The child's own peak when its restore ended."""
    if "rss" not in row:
        runner.target(f"peak RSS, restore of {what}", None, "≤ 1.1 × bytes + 200 MB", False, row.get("error", ""))
        return
    limit = 1.1 * nbytes + 200e6
    runner.target(
        f"peak RSS, restore_tensors of {what} ({nbytes / 1e9:.2f} GB restored; the process's peak at its end)",
        f"{row['rss'] / 1e9:.2f} GB",
        f"≤ 1.1 × bytes + 200 MB = {limit / 1e9:.2f} GB",
        row["rss"] <= limit,
    )


FRESH_RAW = "raw preadv, 2 threads, fresh anonymous memory (ceiling)"
FRESH_TF = "TF get_tensor loop"
FRESH_DR = "distrestore threads"


def fresh_group(runner, workload: str, title: str, nbytes: int, *, tf_need=None, raw_need=None, extra=()) -> dict:
    """The fresh-process, unprimed row of a local workload: the raw 2-thread ``preadv`` ceiling
    into fresh anonymous memory, TF's loop and distrestore (and ``extra`` entries), with
    distrestore's ratios against the first two (targets, or information where None)."""
    g = runner.group(
        title,
        workload,
        [
            (FRESH_RAW, "raw_local", {"workers": 2}),
            (FRESH_TF, "tf_loop", {}),
            (FRESH_DR, "dr_threads", {}),
            *extra,
        ],
        nbytes=nbytes,
        reps=max(7, runner.reps),
        fresh=True,
        note=FRESH_NOTE,
    )
    rows = g["rows"]
    what = f"{workload} fresh process"
    dr_ = rows.get(FRESH_DR, {})
    runner.speedup_target(
        f"{what}: distrestore vs {FRESH_TF} (speed-up)", rows.get(FRESH_TF, {}), dr_, tf_need, info="(info)"
    )
    runner.speedup_target(
        f"{what}: distrestore / {FRESH_RAW} (throughput)", rows.get(FRESH_RAW, {}), dr_, raw_need, info="(info)"
    )
    return g


__all__ = ["FRESH_NOTE", "fresh_group", "memory_target", "ratio", "raw_configs"]
