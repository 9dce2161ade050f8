"""Contenders on an object store behind the latency proxy (fake-gcs-server for ``gs://``, an
S3-API server for ``s3://``): the raw concurrent-GET ceiling, the naive one-request-per-tensor
reader, and distrestore. ``p["store"]`` is "gcs" or "s3", ``p["endpoint"]`` the proxy's URL,
``p["url"]`` the checkpoint's prefix in the bucket."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .common import Timer, check, hashes, lap


def options(p) -> dict:
    """The fsspec ``storage_options`` for the store behind ``p["endpoint"]`` (anonymous)."""
    if p["store"] == "s3":
        return {"endpoint_url": p["endpoint"], "anon": True, "use_listings_cache": False}
    return {"endpoint_url": p["endpoint"], "token": "anon", "use_listings_cache": False}


def filesystem(p):
    if p["store"] == "s3":
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **options(p))
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, **options(p))


def _import_client(p) -> None:
    """The client library's import is not part of a restore (TF's import is untimed too)."""
    filesystem(p)


def raw_get(wdir, man, p):
    """Ceiling: the data file in ranged GETs, ``conc`` at once (threads calling ``cat_file``, or
    fsspec's ``cat_ranges(batch_size=conc)``); bytes kept as returned (no copy). Its ranges are
    known before the timer starts (the size comes from another client), and its own client is
    made inside the timer, as distrestore's is: s3fs loads botocore's service model then, about
    0.07-0.09 s here (gcsfs makes an aiohttp session, about 1 ms)."""
    import distrestore as dr

    path = p["url"] + ".data-00000-of-00001"
    size = filesystem(p).size(path)  # not timed: a raw reader is told its ranges
    fs = filesystem(p)  # a client of its own, not yet made
    conc, chunk, mode = int(p["conc"]), int(p["chunk"]), p["mode"]
    starts = list(range(0, size, chunk))
    ends = [min(size, a + chunk) for a in starts]
    t = Timer().start()
    if p["store"] == "s3":
        fs.connect()  # made once here, not by each of the concurrent first requests
    if mode == "threads":
        with ThreadPoolExecutor(conc) as ex:
            parts = list(ex.map(lambda ab: fs.cat_file(path, start=ab[0], end=ab[1]), zip(starts, ends)))
    else:
        parts = fs.cat_ranges([path] * len(starts), starts, ends, batch_size=conc)
    t.stop()
    data = memoryview(b"".join(parts))
    idx = dr.open_checkpoint(p["url"], storage_options=options(p))
    outs = ((n, data[e.offset : e.offset + e.size]) for n, e in idx.entries.items())
    return t.result(bytes=size, check=check(outs, hashes(wdir)))


def naive_get(wdir, man, p):
    """Naive: one thread, one ``cat_file`` per tensor at the index's offsets. Timed on every
    ``every``-th tensor of each size class and extrapolated per class to the whole checkpoint."""
    import numpy as np

    import distrestore as dr

    _import_client(p)
    every = int(p["every"])
    t = Timer().start()
    t_index, (idx, fs) = lap(lambda: (dr.open_checkpoint(p["url"], storage_options=options(p)), filesystem(p)))
    out, per_class = {}, {}
    for cls, members in man["classes"].items():
        sub = members[::every]

        def read(sub=sub):
            for n in sub:
                e = idx.entries[n]
                data = fs.cat_file(idx.data_file(e.shard_id), start=e.offset, end=e.offset + e.size)
                out[n] = np.frombuffer(data, dtype=np.float32).reshape(e.shape)

        seconds, _ = lap(read)
        per_class[cls] = [seconds, len(sub), len(members)]
    t.stop()
    measured = t_index + sum(s for s, _, _ in per_class.values())
    estimate = t_index + sum(s * total / k for s, k, total in per_class.values())
    return t.result(
        seconds=estimate,
        measured_seconds=measured,
        per_class=per_class,
        check=check(out.items(), hashes(wdir), subset=True),
    )


def dr_remote(wdir, man, p):
    """distrestore: ``restore_tensors(url, storage_options=...)``, default thread executor,
    CRC32C verified."""
    import distrestore as dr

    _import_client(p)
    t = Timer().start()
    out = dr.restore_tensors(p["url"], storage_options=options(p))
    t.stop()
    return t.result(check=check(out.items(), hashes(wdir)))
