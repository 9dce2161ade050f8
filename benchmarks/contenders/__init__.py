"""The contenders: each a function ``(wdir, man, params) -> result`` that runs in a fresh child
process (``python -m benchmarks.child``), times only its restore with :class:`.common.Timer`, and
then checks every tensor it restored against the build-time hashes.

``find(name)`` imports the one module a child needs: TF contenders live in ``tf``, object-store
ones in ``remote``, the rest in ``local``.
"""

from __future__ import annotations

import importlib

MODULES = {
    "local": ("noop", "raw_local", "dr_threads", "dr_stream", "dr_fetch", "dr_ray", "index_dr"),
    "tf": ("tf_loop", "tf_batch", "tf_fetch", "index_tf", "tf_gcs_loop"),
    "remote": ("raw_get", "naive_get", "dr_remote"),
}
NAMES = {name: module for module, names in MODULES.items() for name in names}


def find(name: str):
    if name not in NAMES:
        raise KeyError(f"unknown contender {name!r}; one of {', '.join(sorted(NAMES))}")
    return getattr(importlib.import_module(f"{__name__}.{NAMES[name]}"), name)
