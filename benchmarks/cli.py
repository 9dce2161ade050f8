"""``python -m benchmarks``: run the workloads, check every result, write the report.

python -m benchmarks                       # the full protocol (~35 min on 2 cores); writes benchmarks/RESULTS.md
python -m benchmarks --quick               # a small version of every workload, one round: correctness
python -m benchmarks --smoke               # smaller still (the test suite runs it)
python -m benchmarks --workloads few_large,memory --keep
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import groups, report, workloads
from .harness import CHILD_ENV, Runner, log, wait_for_quiet

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = ap.add_argument
    size = ap.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="size", action="store_const", const="quick", help="every workload, small, 1 round"
    )
    size.add_argument("--smoke", dest="size", action="store_const", const="smoke", help="smaller than --quick")
    add("--workloads", default=",".join(workloads.ALL), help=f"a subset of {','.join(workloads.ALL)}")
    add("--out", default=None, help="report (default: RESULTS.md for a full run of all, else <work>/RESULTS-<size>.md)")
    add("--work", default=os.path.join(HERE, "_work"), help="work dir for checkpoints (default benchmarks/_work)")
    add("--keep", action="store_true", help="keep the built checkpoints (reused next time)")
    add("--reps", type=int, default=None, help="timed rounds per group (default 5; fresh-process rows at least 7)")
    add("--settle", type=float, default=3.0, help="seconds before each fresh-process child (default 3)")
    add("--no-prime", action="store_true", help="no memory primer before the children of primed groups")
    add("--quiet-load", type=float, default=1.0, help="first wait (<= 5 min) for the load average to drop below this")
    add("--service-parts", default=None, help="subset of whole,quarters,small,late,rate,plan")
    add("--service-nodes", type=int, default=4)
    add("--service-latency-ms", type=float, default=20.0)
    add("--service-bandwidth-mbps", type=float, default=200.0)
    add("--service-object-store-mb", type=int, default=None, help="per worker node (default 1536; short runs 256)")
    args = ap.parse_args(argv)
    args.size = args.size or "full"
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in args.workloads:
        if w not in workloads.ALL:
            ap.error(f"unknown workload {w!r}")
    if args.service_parts:
        args.service_parts = [p.strip() for p in args.service_parts.split(",")]
    if args.service_nodes < 4:
        ap.error("--service-nodes must be at least 4")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run; the exit status is 1 when a contender failed or a result did not check out."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    everything = args.size == "full" and set(args.workloads) == set(workloads.ALL)
    default = os.path.join(HERE, "RESULTS.md") if everything else os.path.join(args.work, f"RESULTS-{args.size}.md")
    out = args.out or default
    started = time.time()
    for k, v in CHILD_ENV.items():  # this process talks to the emulators and Ray too
        os.environ.setdefault(k, v)
    if args.size == "full":
        load = wait_for_quiet(args.quiet_load, 300)
        log(f"1-minute load average {load:.2f}")
    runner = Runner(args)
    os.makedirs(runner.work, exist_ok=True)
    try:
        for w in (w for w in workloads.ALL if w in args.workloads):
            try:
                groups.run(w, runner)
            except Exception as e:
                traceback.print_exc()
                runner.failures.append(f"{w}: {type(e).__name__}: {e}")
                runner.notes.append(f"{w}: the benchmark itself failed: {type(e).__name__}: {e}")
    finally:
        runner.loads.stop()
        text = report.render(runner, "python -m benchmarks " + " ".join(argv), started)
        report.write(text, out)
        print(text)
        log(f"wrote {out}")
        if not args.keep:
            for w in workloads.ALL:
                runner.drop(w)
    return 1 if runner.failures else 0
