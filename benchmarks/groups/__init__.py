"""One module per workload: the groups it runs and the targets it judges (``run(runner)``)."""

from __future__ import annotations

import importlib

MODULES = {
    "few_large": "few_large",
    "many_small": "many_small",
    "partitioned": "partitioned",
    "remote": "remote",
    "memory": "memory",
    "service": "service",
}


def run(workload: str, runner) -> None:
    importlib.import_module(f"{__name__}.{MODULES[workload]}").run(runner)
