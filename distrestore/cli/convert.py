"""Convert a TensorFlow checkpoint (local or in a bucket) to safetensors, streaming.

The output's header is written first (every size is known from the checkpoint's index), then
each tensor is written into place as the parallel restore delivers it, so memory stays near
--max-inflight-bytes (default 256MiB) whatever the checkpoint's size. Names are kept; values
are bit-exact. With --max-shard-bytes the tensors are split over several files named like
Hugging Face's (OUT "model.safetensors" -> "model-00001-of-00003.safetensors", ...) with an
index "model.safetensors.index.json" ({"metadata": {"total_size": N}, "weight_map": {name:
file}}). Files appear complete or not at all.

safetensors holds bool, (u)int8-64, float16, bfloat16, float32, float64, complex64 and the
float8 types e5m2, e4m3fn, e4m3fnuz and e5m2fnuz; TF's quantized types are written as their
integers (the TF dtype is kept in the header's metadata). A selected tensor of any other dtype
(strings, complex128, int4, ...) stops the conversion before anything is read, naming the tensor
and its dtype (exit code 2): leave it out with --names or --regex.
"""

from __future__ import annotations

from . import common

HELP = "convert a checkpoint to safetensors (streaming, optionally sharded)"


def add_arguments(parser) -> None:
    common.add_checkpoint(parser)
    parser.add_argument("output", metavar="OUT.safetensors", help="the safetensors file to write (local)")
    common.add_selection(parser)
    common.add_reading(parser)
    parser.add_argument(
        "--max-shard-bytes",
        type=common.byte_count,
        metavar="N",
        help="split the output into files of at most N bytes of tensors each (a larger tensor gets a file of its own)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC32C checks")


def convert(args, index, names, output: str, max_shard_bytes, limits: common.Limits) -> int:
    from ..export.to_safetensors import convert_to_safetensors

    timer = common.Timer()
    files = convert_to_safetensors(
        index,
        output,
        names,
        executor=common.executor(args.executor),
        verify=not args.no_verify,
        max_inflight_bytes=args.max_inflight_bytes,
        max_shard_bytes=max_shard_bytes,
        progress=common.progress(args),
        timeout=limits.timeout,
        deadline=limits.deadline(),
    )
    nbytes = sum(index.entries[n].num_elements * index.entries[n].dtype.itemsize for n in names)
    checked = "CRC32C not checked" if args.no_verify else "every CRC32C checked"
    line = common.summary("converted", len(names), nbytes, timer.seconds, f"executor={args.executor}, {checked}")
    print(f"{line}; wrote {', '.join(files)}")
    return 0


def run(args) -> int:
    if not args.output.endswith(".safetensors"):
        args.parser.error(f"the output must end in .safetensors, got {args.output!r}")
    limits = common.Limits(args)
    index = common.open_checkpoint(args, limits)
    return convert(args, index, common.selected_names(args, index), args.output, args.max_shard_bytes, limits)
