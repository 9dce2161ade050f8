"""Start the restore service's coordinator in a running Ray cluster (the one RAY_ADDRESS names,
as a Ray job's driver joins it; without RAY_ADDRESS, a new local Ray). Without --detached it
serves until interrupted (Ctrl-C, SIGTERM) and stops the coordinator then; with --detached it
starts a coordinator that outlives this command, prints how to connect, and exits. Workers
connect with distrestore.connect(NAME, namespace=NS); see docs/service.md.
"""

from __future__ import annotations

import os
import signal
import threading

from ..cli import common

HELP = "start the restore service on a Ray cluster"


def add_arguments(parser) -> None:
    common.add_checkpoint(parser, nargs="*")
    parser.add_argument("--name", default="distrestore", help="the service's name (default distrestore)")
    parser.add_argument("--namespace", default=None, help="Ray namespace: other jobs connect through it")
    parser.add_argument("--detached", action="store_true", help="start a coordinator that outlives this command")
    parser.add_argument(
        "--cache-bytes",
        type=common.byte_count,
        metavar="N",
        default=None,
        help="bytes of read results the coordinator keeps after every registered worker took them, "
        "so that late registrations need no new reads (default: half the cluster's object store)",
    )


def _join_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


def run(args) -> int:
    from .client import serve

    _join_ray()
    client = serve(
        args.checkpoint or None,
        name=args.name,
        namespace=args.namespace,
        detached=args.detached,
        storage_options=common.storage_options(args),
        cache_bytes=args.cache_bytes,
    )
    hint = f"distrestore.connect({args.name!r}" + (f", namespace={args.namespace!r})" if args.namespace else ")")
    opened = ", ".join(client.stats()["checkpoints"]) or "nothing yet"
    print(f"restore service {args.name!r} serving {opened}; workers: {hint}", flush=True)
    if args.detached:
        print(f"it runs until stopped: {hint}.shutdown()", flush=True)
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        client.shutdown()
    print(f"restore service {args.name!r} stopped", flush=True)
    return 0
