"""The child process side of the harness: ``python -m benchmarks.child JOB`` runs one contender
(JOB is JSON: ``{"contender", "wdir", "params"}``) and prints ``RESULT {json}`` on its last
line; ``python -m benchmarks.child --build WORKLOAD --size SIZE --work DIR`` builds a workload.
The harness starts it with its environment already set (``harness.child_env``)."""

from __future__ import annotations

import json
import os
import sys

from . import contenders, workloads


def run(job: dict) -> dict:
    wdir = job["wdir"]
    man = workloads.load(wdir)
    return contenders.find(job["contender"])(wdir, man, job.get("params", {}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--build"]:
        workload, size, work = argv[1], argv[argv.index("--size") + 1], argv[argv.index("--work") + 1]
        workloads.build(workload, workloads.specs(size)[workload], os.path.join(work, workload))
        return
    print("RESULT " + json.dumps(run(json.loads(argv[0]))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
