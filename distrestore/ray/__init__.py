"""Everything of distrestore that runs on Ray: the Ray executor and the restore service.

The only part of the package that imports ray, and only when one of its names is used: importing
``distrestore`` or this package does not import ray. ``RayExecutor`` runs one process's plan on a
pool of read actors (``executor.py``); ``serve``/``connect``/``ServiceClient`` are the restore
service, a coordinator actor that many workers register their reads with (``service.py``,
``client.py``; see ``docs/service.md``).
"""

from __future__ import annotations

_LAZY = {
    "RayExecutor": "executor",
    "RayExecutorStats": "executor",
    "ServiceClient": "client",
    "serve": "client",
    "connect": "client",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distrestore.ray' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
