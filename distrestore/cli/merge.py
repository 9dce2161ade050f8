"""Merge checkpoints into one, as TF's MergeV2Checkpoints: every tensor of every source, the
slices of one tensor joined, names kept byte for byte. A source is a checkpoint prefix or a
directory (its latest checkpoint); DEST is the merged checkpoint's prefix. Data files are
hard-linked where the filesystem allows, copied otherwise (server-side within one bucket). Sources
are never deleted or changed; a name in two sources is an error (MergeConflictError, exit code 1).
The merge is atomic: a failure or a kill leaves DEST absent (or as it was) or complete, and the
index is written last. One set of storage options serves the sources and DEST; writes to a bucket
are retried on transient faults. Prints one line naming DEST.
"""

from __future__ import annotations

from . import common

HELP = "merge checkpoints into one (sources are kept)"


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="checkpoints to merge (prefixes or directories)")
    parser.add_argument("destination", metavar="DEST", help="the merged checkpoint's prefix")
    common.add_storage_options(parser)


def run(args) -> int:
    from ..writer import merge_checkpoints

    timer = common.Timer()
    prefix = merge_checkpoints(args.sources, args.destination, storage_options=common.storage_options(args))
    print(f"merged {len(args.sources)} checkpoints into {prefix} in {timer.seconds:.2f} s")
    return 0
