"""List a checkpoint's tensors: name, dtype, shape, bytes stored and data file(s).

One tensor a line, tab-separated, sorted by name (as tf.train.list_variables). A partitioned
tensor shows its full shape, the bytes of all its slices and every data file they are in.
With --json, one JSON array of objects with the keys name, dtype, shape, bytes, data_files and
slices (the number of stored slices; 0 for a plain tensor).
"""

from __future__ import annotations

import json
import posixpath

from . import common

HELP = "list tensors: name, dtype, shape, bytes, data files"


def add_arguments(parser) -> None:
    common.add_checkpoint(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of lines")
    common.add_limits(parser.add_argument_group("reading"))


def describe(index) -> list[dict]:
    """One dict per tensor (the --json objects), sorted by name."""
    out = []
    for name, entry in sorted(index.entries.items()):
        parts = [index.slice_entry(name, s) for s in entry.slices] if entry.partitioned else [entry]
        files = sorted({posixpath.basename(index.data_file(p.shard_id)) for p in parts})
        out.append(
            {
                "name": name,
                "dtype": entry.dtype.name,
                "shape": list(entry.shape),
                "bytes": sum(p.size for p in parts),
                "data_files": files,
                "slices": len(entry.slices),
            }
        )
    return out


def run(args) -> int:
    limits = common.Limits(args)
    index = common.open_checkpoint(args, limits)
    rows = describe(index)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']}\t{r['dtype']}\t{r['shape']}\t{r['bytes']}\t{','.join(r['data_files'])}")
    return 0
