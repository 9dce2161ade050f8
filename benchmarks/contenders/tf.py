"""TensorFlow's own readers as contenders: its ``get_tensor`` loop, its batch ``RestoreV2``,
slice specs for new partitionings, ``list_variables``, and the loop over ``gs://`` through TF's
own GCS file system (aimed at the emulator: see ``benchmarks.tfgcs``)."""

from __future__ import annotations

from ..workloads import drop_cache, load, region_key
from .common import Timer, check, check_listing, hashes, names


def tf_loop(wdir, man, p):
    """TF: ``tf.train.load_checkpoint(prefix)``, then ``get_tensor`` for every name."""
    import tensorflow as tf

    wanted = names(wdir)
    if p.get("cold"):
        drop_cache(man["prefix"])
    t = Timer().start()
    r = tf.train.load_checkpoint(man["prefix"])
    out = {n: r.get_tensor(n) for n in wanted}
    t.stop()
    return t.result(check=check(out.items(), hashes(wdir)))


def tf_gcs_loop(wdir, man, p):
    """TF's loop over ``gs://``: TF's GCS file system, its requests sent to the emulator through
    the latency proxy (the child runs with the settings ``benchmarks.tfgcs`` makes)."""
    import tensorflow as tf

    wanted = names(wdir)
    url = p["url"]
    tf.io.gfile.exists(url + ".index")  # not timed: TF's auth and HTTP set-up
    t = Timer().start()
    r = tf.train.load_checkpoint(url)
    out = {n: r.get_tensor(n) for n in wanted}
    t.stop()
    return t.result(check=check(out.items(), hashes(wdir)))


def tf_batch(wdir, man, p):
    """TF: one ``tf.raw_ops.RestoreV2`` for all names (TF's fastest path), to numpy."""
    import tensorflow as tf

    wanted = names(wdir)
    if p.get("cold"):
        drop_cache(man["prefix"])
    t = Timer().start()
    ts = tf.raw_ops.RestoreV2(
        prefix=man["prefix"],
        tensor_names=wanted,
        shape_and_slices=[""] * len(wanted),
        dtypes=[tf.float32] * len(wanted),
    )
    out = {n: x.numpy() for n, x in zip(wanted, ts)}
    t.stop()
    return t.result(check=check(out.items(), hashes(wdir)))


def tf_fetch(wdir, man, p):
    """TF's way to restore into another partitioning: ``RestoreV2`` with a slice spec per region."""
    import tensorflow as tf

    case = man["cases"][p["case"]]
    built = load(wdir, "names")
    shapes = dict(zip(built["names"], built["shapes"]))

    def spec(name, r):
        if r is None:
            return ""
        dims = " ".join(str(d) for d in shapes[name])
        parts = ":".join("-" if (a, b) == (0, d) else f"{a},{b - a}" for (a, b), d in zip(r, shapes[name]))
        return f"{dims} {parts}"

    t = Timer().start()
    ts = tf.raw_ops.RestoreV2(
        prefix=man["prefix"],
        tensor_names=[n for n, _ in case],
        shape_and_slices=[spec(n, r) for n, r in case],
        dtypes=[tf.float32] * len(case),
    )
    out = [x.numpy() for x in ts]
    t.stop()
    regions = load(wdir, "hashes")["regions"]
    keys = [region_key(n, r) for n, r in case]
    return t.result(check=check(zip(keys, out), {k: regions[k][0] for k in keys}))


def index_tf(wdir, man, p):
    import tensorflow as tf

    t = Timer().start()
    v = tf.train.list_variables(man["prefix"])
    t.stop()
    return t.result(check=check_listing(v, wdir))
