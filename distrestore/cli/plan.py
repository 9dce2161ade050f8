"""Print the read plan a restore would run, without reading any tensor or starting anything.

The plan depends on the storage (local or remote), the number of concurrent reads and
--max-inflight-bytes. By default it is planned for the threads executor's number of reads on
this machine; --workers N plans for N concurrent reads instead, which is how to see a Ray
executor's plan (N = read actors x tasks per actor x threads per task) without a cluster.
"""

from __future__ import annotations

from . import common

HELP = "print the read plan (nothing is read or started)"


class PlanningOnly:
    """An executor stand-in that only answers how many reads run at once."""

    def __init__(self, workers: int):
        self.workers = workers

    def workers_for(self, local: bool) -> int:
        return self.workers


def add_arguments(parser) -> None:
    common.add_checkpoint(parser)
    common.add_selection(parser)
    parser.add_argument(
        "--executor",
        default="threads",
        choices=["threads", "ray"],
        help="whose defaults to plan with (ray needs --workers: its size is the cluster's)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="plan for N concurrent reads")
    parser.add_argument(
        "--max-inflight-bytes",
        type=common.byte_count,
        metavar="N",
        default=common.STREAM_BUDGET,
        help="as for restore (default 256MiB)",
    )
    common.add_limits(parser.add_argument_group("reading"))


def run(args) -> int:
    from ..execute.threads import ThreadExecutor
    from ..restore import TensorRequest, plan_requests
    from ..storage import deadline_at

    if args.workers is not None and args.workers < 1:
        args.parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.executor == "ray" and args.workers is None:
        args.parser.error(
            "the Ray executor's plan depends on the cluster's size: pass --workers N "
            "(read actors x tasks per actor x threads per task)"
        )
    limits = common.Limits(args)
    index = common.open_checkpoint(args, limits)
    if limits.deadline() is not None:  # planning asks each data file's size: under the deadline too
        index = index.with_storage(index.storage.limited(deadline_at=deadline_at(limits.deadline())))
    names = common.selected_names(args, index)
    local = index.storage.local
    where = "local files" if local else "object storage"
    if args.workers is not None:
        workers, why = args.workers, f"--workers {args.workers}"
    else:
        workers = ThreadExecutor().workers_for(local)
        why = f"the threads executor's default for {where} on this machine"
    plan = plan_requests(
        [TensorRequest(index, n) for n in names], PlanningOnly(workers), max_inflight_bytes=args.max_inflight_bytes
    )
    print(f"plan for {workers} concurrent reads ({why}), executor={args.executor}")
    print(plan.summary())
    return 0
