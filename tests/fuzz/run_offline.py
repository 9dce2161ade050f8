"""Run the hostile-checkpoint fuzzer offline: many more cases than the suite's 10,200.

    PYTHONPATH=. python tests/fuzz/run_offline.py --cases 100000 [--workers 2] [--start 0]
        [--levels raw,block,entry] [--json figures.json]

Cases are split evenly over the levels, seeds ``start .. start + cases/levels``; each runs in a
memory-capped child (``worker.py``). Prints progress and the figures docs/hostile-input.md reports
(cases, failures, decoder agreement, max CPU and wall time per case, max added peak memory);
every failure is printed with its ``level:seed`` label, which ``cases.generate(level, seed)``
turns back into the case. Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the `fuzz` package

from fuzz import cases
from fuzz.harness import generated, judge, run_many, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--start", type=int, default=0, help="first seed of each level")
    p.add_argument("--levels", default=",".join(cases.LEVELS))
    p.add_argument("--wall-slack", type=float, default=1.0, help="allow wall time up to this x 1 s (busy machines)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    levels = args.levels.split(",")
    per = -(-args.cases // len(levels))
    reqs = [r for level in levels for r in generated(level, range(args.start, args.start + per))]
    t0 = time.monotonic()
    step = max(1, len(reqs) // 20)

    def progress(done: int) -> None:
        if done % step == 0:
            print(f"{done}/{len(reqs)} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    results = run_many(reqs, workers=args.workers, progress=progress)
    failures = judge(results, wall_slack=args.wall_slack)
    figures = {**summary(results), "judged_failures": len(failures), "seconds": round(time.monotonic() - t0, 1)}
    figures["levels"] = levels
    figures["seeds"] = [args.start, args.start + per]
    for f in failures:
        print(f, end="\n\n")
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
