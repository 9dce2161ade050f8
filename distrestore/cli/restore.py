"""Restore tensors in parallel: check them, or write them to a file.

Without --output the tensors are read, checked and dropped as they arrive (a dry run of the
restore), and one line reports the throughput. Reads are streamed: at most --max-inflight-bytes
(default 256MiB) are outstanding, so memory stays bounded whatever the checkpoint's size.
--verify-only does the same and also checks the variant tensors (tf.data iterator states), so
that every CRC32C of the selection is checked; it refuses --output and --no-verify.

--output FILE.npz writes an exact .npz: every name, TF dtype and bit kept (bfloat16, float8,
int4 and strings included, no pickle); read it back with distrestore.load_npz(FILE). The format
is described in distrestore/export/npz.py. --output FILE.safetensors writes one safetensors file,
as "distrestore convert" does.
"""

from __future__ import annotations

import sys

from . import common

HELP = "restore tensors in parallel; verify them, or write .npz / .safetensors"


def add_arguments(parser) -> None:
    common.add_checkpoint(parser)
    common.add_selection(parser)
    common.add_reading(parser)
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC32C checks")
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="as without --output, and check the variant tensors' records too: every CRC32C of the selection",
    )
    parser.add_argument("--output", metavar="FILE", help="write the tensors to FILE.npz or FILE.safetensors")


def _nbytes(arr) -> int:
    if arr.dtype == object:
        return sum(len(e) for e in arr.reshape(-1))
    return arr.nbytes


def run(args) -> int:
    from ..restore import iter_restore_tensors

    if args.verify_only and (args.output or args.no_verify):
        args.parser.error("--verify-only reads and checks without writing: drop --output and --no-verify")
    if args.output and not args.output.endswith((".npz", ".safetensors")):
        args.parser.error(f"--output must end in .npz or .safetensors, got {args.output!r}")
    limits = common.Limits(args)
    index = common.open_checkpoint(args, limits)
    names = common.selected_names(args, index)
    if args.output and args.output.endswith(".safetensors"):
        from .convert import convert

        return convert(args, index, names, args.output, max_shard_bytes=None, limits=limits)
    timer = common.Timer()
    count = nbytes = 0
    stream = iter_restore_tensors(
        index,
        names,
        executor=common.executor(args.executor),
        verify=not args.no_verify,
        max_inflight_bytes=args.max_inflight_bytes,
        progress=common.progress(args),
        timeout=limits.timeout,
        deadline=limits.deadline(),
    )
    if args.output:
        from ..export.npz import NpzWriter

        with NpzWriter(args.output) as out:
            for name, arr in stream:
                out.add(name, arr, index.entries[name].dtype)
                count, nbytes = count + 1, nbytes + _nbytes(arr)
    else:
        for _, arr in stream:
            count, nbytes = count + 1, nbytes + _nbytes(arr)
    if args.verify_only:
        count, nbytes = count + _verify_variants(args, index, limits), nbytes
    checked = "CRC32C not checked" if args.no_verify else "every CRC32C checked"
    verb = "verified" if args.verify_only else "restored"
    line = common.summary(verb, count, nbytes, timer.seconds, f"executor={args.executor}, {checked}")
    print(line + (f"; wrote {args.output}" if args.output else ""))
    return 0


def _verify_variants(args, index, limits: common.Limits) -> int:
    """Variants have no array value: check their records' CRC32C through the reader."""
    from ..reader import CheckpointReader

    if args.names:
        variants = [n for n in args.names if index.entries[n].dtype.is_variant]
    else:
        variants = [n for n, e in index.entries.items() if e.dtype.is_variant]
        if args.regex is not None:
            variants = [n for n in variants if args.regex.search(n)]
    for name in variants:  # a reader per call: each gets what is left of --deadline
        CheckpointReader(index, timeout=limits.timeout, deadline=limits.deadline()).get_variant_records(name)
    if variants and not common.progress(args):
        print(f"checked {len(variants)} variant tensors", file=sys.stderr)
    return len(variants)
