"""The workloads: their sizes, how each checkpoint is built (with TensorFlow's ``SaveV2`` where TF
imports, else ``distrestore.save_tensors``), and the files a built workload leaves in its
directory for the contenders to check against.

A built workload directory holds the checkpoint (``ckpt.*``) and three JSON files, loaded by a
contender only where it needs them, so that what a contender measures is not the harness's
bookkeeping: ``manifest.json`` (the spec, the prefix, the byte count, the partitioned cases, the
remote size classes), ``names.json`` (every tensor name, sorted, and each shape) and
``hashes.json`` (the SHA-1 of every tensor's bytes, and of every region a partitioned case
restores), loaded after the timed restore.

Public builders for other benchmarks: :func:`save`, :func:`write_sliced` (variables stored as row
slices over several data files, as TF's sharded Saver writes them), :func:`digest`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time

MiB = 2**20
GiB = 2**30
LOCAL = ("few_large", "many_small", "partitioned", "memory")
ALL = ("many_small", "partitioned", "remote", "few_large", "memory", "service")
SIZES = ("smoke", "quick", "full")
PARTITION_CASES = ("rows2", "rows4", "cols2", "subset")


def specs(size: str) -> dict:
    """Each workload's parameters at ``size``: "full" (the targets' sizes), "quick" (a small
    version of every workload) or "smoke" (the smallest that still takes every code path)."""
    pick = {"full": 0, "quick": 1, "smoke": 2}[size]

    def s(*values):
        return values[pick]

    return {
        # >= 1 GB in tensors >= 64 MB (16 x 64 MiB float32) plus 5,000 x 1 KiB, one data file
        "few_large": {
            "big_n": s(16, 4, 2),
            "big_elems": s(16 * MiB, 4 * MiB, 2 * MiB),
            "small_n": s(5000, 1000, 200),
            "small_elems": 256,
            "seed": 1,
        },
        # 200,000 x 1 KiB float32
        "many_small": {"n": s(200_000, 20_000, 4_000), "elems": 256, "seed": 2},
        # [rows, cols] float32 variables stored as 5 row slices over 3 data files
        "partitioned": {
            "vars": 4,
            "rows": s(10000, 2000, 500),
            "cols": s(2560, 1280, 256),
            "slices": 5,
            "shards": 3,
            "seed": 3,
        },
        # a mix of sizes: 16 MiB, 1 MiB and 4 KiB tensors (~308 MiB; quick ~71 MiB)
        "remote": {
            "classes": {
                "big": [s(12, 3, 2), 4 * MiB],
                "mid": [s(100, 20, 8), 256 * 1024],
                "small": [s(4000, 800, 200), 1024],
            },
            "seed": 4,
        },
    }


def digest(buf) -> str:
    """SHA-1 of a tensor's bytes (numpy arrays: their C-order bytes)."""
    import numpy as np

    if isinstance(buf, np.ndarray):
        buf = memoryview(np.ascontiguousarray(buf)).cast("B")
    return hashlib.sha1(buf).hexdigest()


def have_tf() -> bool:
    try:
        import tensorflow  # noqa: F401

        return True
    except Exception:
        return False


def save(prefix: str, tensors: dict) -> str:
    """Write a single-shard bundle with TF's SaveV2 if TF imports, else distrestore's writer;
    says which."""
    if have_tf():
        import tensorflow as tf

        names = list(tensors)
        tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[tensors[n] for n in names]
        )
        return f"tf {tf.__version__} raw_ops.SaveV2"
    import distrestore as dr

    dr.save_tensors(prefix, tensors)
    return "distrestore.save_tensors (TF not importable)"


def data_files(prefix: str) -> list[str]:
    return sorted(glob.glob(prefix + ".data-*-of-*"))


def drop_cache(prefix: str) -> None:
    """Evict a checkpoint's files from the page cache (no root needed)."""
    for f in data_files(prefix) + [prefix + ".index"]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(prefix: str) -> None:
    """Read a checkpoint's files once, so that they are in the page cache."""
    for f in data_files(prefix) + [prefix + ".index"]:
        with open(f, "rb") as fh:
            while fh.read(64 * MiB):
                pass


def load(wdir: str, part: str = "manifest") -> dict:
    """One of a built workload's JSON files: "manifest", "names" or "hashes"."""
    with open(os.path.join(wdir, f"{part}.json")) as f:
        return json.load(f)


def build(workload: str, spec: dict, wdir: str) -> dict:
    """Write ``workload``'s checkpoint under ``wdir`` and its JSON files; the manifest."""
    import numpy as np

    os.makedirs(wdir, exist_ok=True)
    prefix = os.path.join(wdir, "ckpt")
    rng = np.random.default_rng(spec["seed"])
    t0 = time.perf_counter()
    man: dict = {"workload": workload, "spec": spec, "prefix": prefix}
    region_hashes: dict = {}
    if workload == "few_large":
        tensors = {f"big/{i:03d}": rng.random(spec["big_elems"], dtype=np.float32) for i in range(spec["big_n"])}
        small = rng.random((spec["small_n"], spec["small_elems"]), dtype=np.float32)
        tensors.update({f"small/{i:05d}": small[i] for i in range(spec["small_n"])})
        man["writer"] = save(prefix, tensors)
    elif workload == "many_small":
        block = rng.random((spec["n"], spec["elems"]), dtype=np.float32)
        tensors = {f"layer{i // 1000:03d}/w{i % 1000:03d}": block[i] for i in range(spec["n"])}
        man["writer"] = save(prefix, tensors)
    elif workload == "remote":
        tensors, classes = {}, {}
        for cls, (n, elems) in spec["classes"].items():
            classes[cls] = [f"{cls}/{i:05d}" for i in range(n)]
            block = rng.random((n, elems), dtype=np.float32)
            tensors.update({name: block[i] for i, name in enumerate(classes[cls])})
        man["classes"] = classes
        man["writer"] = save(prefix, tensors)
    elif workload == "partitioned":
        tensors, how = write_sliced(prefix, spec, rng)
        man["writer"] = how
        man["cases"] = partition_cases(spec, sorted(tensors))
        for reqs in man["cases"].values():
            for name, region in reqs:
                arr = tensors[name] if region is None else tensors[name][tuple(slice(a, b) for a, b in region)]
                region_hashes[region_key(name, region)] = [digest(arr), int(arr.nbytes)]
    else:
        raise ValueError(workload)
    names = sorted(tensors)
    man["count"] = len(names)
    man["bytes"] = int(sum(np.asarray(t).nbytes for t in tensors.values()))
    man["build_seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(wdir, "names.json"), "w") as f:
        json.dump({"names": names, "shapes": [list(np.shape(tensors[n])) for n in names]}, f)
    with open(os.path.join(wdir, "hashes.json"), "w") as f:
        json.dump({"tensors": {n: digest(tensors[n]) for n in names}, "regions": region_hashes}, f)
    with open(os.path.join(wdir, "manifest.json"), "w") as f:
        json.dump(man, f)
    return man


def write_sliced(prefix: str, spec: dict, rng) -> tuple[dict, str]:
    """Variables ``part/var{i}`` of [rows, cols] float32, each stored as ``slices`` row slices
    spread over ``shards`` data files: one SaveV2 per shard with slice specs, then
    MergeV2Checkpoints, as TF's sharded Saver does. Returns the full variables and how they were
    written. Needs TensorFlow."""
    import numpy as np

    if not have_tf():
        raise RuntimeError("writing sliced entries needs TensorFlow")
    import tensorflow as tf

    rows, cols, k, shards = spec["rows"], spec["cols"], spec["slices"], spec["shards"]
    full = {f"part/var{v}": rng.random((rows, cols), dtype=np.float32) for v in range(spec["vars"])}
    bounds = np.linspace(0, rows, k + 1).astype(int)
    items = [(n, j) for n in full for j in range(k)]
    wdir = os.path.dirname(prefix)
    tmp = []
    for s in range(shards):
        mine = [(n, j) for i, (n, j) in enumerate(items) if i % shards == s]
        p = os.path.join(wdir, f"tmp_shard{s}")
        tf.raw_ops.SaveV2(
            prefix=p,
            tensor_names=[n for n, _ in mine],
            shape_and_slices=[f"{rows} {cols} {bounds[j]},{bounds[j + 1] - bounds[j]}:-" for _, j in mine],
            tensors=[full[n][bounds[j] : bounds[j + 1]] for n, j in mine],
        )
        tmp.append(p)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=tmp, destination_prefix=prefix, delete_old_dirs=False)
    for f in os.listdir(wdir):
        if f.startswith("tmp_shard"):
            os.remove(os.path.join(wdir, f))
    return full, f"tf {tf.__version__} raw_ops.SaveV2 with slice specs + MergeV2Checkpoints"


def row_blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` row blocks of ``rows`` rows, as ``np.linspace`` cuts them."""
    import numpy as np

    b = np.linspace(0, rows, parts + 1).astype(int)
    return [(int(b[i]), int(b[i + 1])) for i in range(parts)]


def partition_cases(spec: dict, names: list[str]) -> dict:
    """The partitioned workload's restore cases: ``[[name, region or None], ...]`` each."""
    rows, cols = spec["rows"], spec["cols"]
    cases = {}
    for parts in (2, 4):  # the same variables cut into 2 or 4 row blocks (not the stored 5)
        cases[f"rows{parts}"] = [[n, [[a, b], [0, cols]]] for n in names for a, b in row_blocks(rows, parts)]
    # column partitioning: both halves requested together, so each stored row is read once
    cases["cols2"] = [[n, [[0, rows], [a, b]]] for n in names for a, b in ((0, cols // 2), (cols // 2, cols))]
    # a subset: one whole variable (assembled from its 5 slices) and a row block of another
    # that crosses a stored slice boundary
    cases["subset"] = [[names[0], None], [names[-1], [[int(rows * 0.3), int(rows * 0.5)], [0, cols]]]]
    return cases


def region_key(name: str, region) -> str:
    return name if region is None else f"{name}[{','.join(f'{a}:{b}' for a, b in region)}]"
