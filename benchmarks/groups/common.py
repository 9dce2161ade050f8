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


def fresh_ratios(runner, what: str, g: dict, dr_label: str, others: dict) -> None:
    """Ratios of the fresh-process row: ``others`` maps a label to (target or None, text)."""
    dr_ = g["rows"].get(dr_label, {})
    for label, (need, text) in others.items():
        row = g["rows"].get(label, {})
        if text.startswith("throughput"):  # distrestore's throughput / the other's: its time / ours
            runner.speedup_target(f"{what}: distrestore / {label} ({text})", row, dr_, need, info="(info)")
        else:
            runner.speedup_target(f"{what}: distrestore vs {label} ({text})", row, dr_, need, info="(info)")


__all__ = ["FRESH_NOTE", "fresh_ratios", "memory_target", "ratio", "raw_configs"]
