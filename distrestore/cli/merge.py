"""Merge checkpoints into one, as TF's MergeV2Checkpoints: every tensor of every source, the
slices of one tensor joined. Sources are never deleted or changed; a name in two sources is an
error (MergeConflictError, exit code 1). Prints the destination prefix.
"""

from __future__ import annotations

from . import common

HELP = "merge checkpoints into one (sources are kept)"


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="checkpoint prefixes to merge")
    parser.add_argument("destination", metavar="DEST", help="the merged checkpoint's prefix")
    common.add_storage_options(parser)


def run(args) -> int:
    from ..writer import merge_checkpoints

    timer = common.Timer()
    prefix = merge_checkpoints(args.sources, args.destination, storage_options=common.storage_options(args))
    print(f"merged {len(args.sources)} checkpoints into {prefix} in {timer.seconds:.2f} s")
    return 0
