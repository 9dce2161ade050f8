"""Ranged GETs read straight into their destination buffers, for gcsfs and s3fs.

``cat_file`` hands back one ``bytes`` per answer: aiohttp gathers the body's chunks and joins
them, so each byte is first copied into memory that exists only to be copied again into its
destination, and that memory is fresh (page faults) for every answer. Here the body is read
chunk by chunk as it arrives, and each chunk is copied into place with its CRC32C taken in the
same pass (:class:`Sink`). The answer is never whole in memory, and that copy is the only one,
as in ``cat_file``.

The readers are methods of the single-try filesystem classes ``fsspec.py`` makes
(:func:`methods`). They build a GET the way gcsfs's and s3fs's own ``_cat_file`` do: the same
session, headers, requester-pays parameters, version or generation, and error translation; a
zonal GCS bucket (gRPC) is still read by gcsfs itself. A version of those libraries that lacks
one of the pieces gets no reader, and its ranges are read with ``cat_file`` as before.
"""

from __future__ import annotations

from ..format import crc


class Sink:
    """Consecutive writable buffers, filled from the chunks of one answer in order. Each
    buffer's CRC32C is taken while its bytes are copied in; a buffer may span chunks."""

    def __init__(self, views):
        self._views = [memoryview(v).cast("B") for v in views]
        self.expected = sum(len(v) for v in self._views)
        self.received = 0
        self.crcs: list[int] = []
        self._i = 0  # the buffer being filled
        self._pos = 0  # bytes of it already there
        self._crc = 0  # their CRC32C

    def write(self, chunk) -> None:
        src = memoryview(chunk).cast("B")
        n = len(src)
        if self.received + n > self.expected:
            # a store that ignores the Range header answers with the whole object
            raise ValueError(f"the answer holds more than the {self.expected} bytes asked for")
        self.received += n
        views, i, pos = self._views, self._i, self._pos
        # the buffers this chunk fills, whole or in part: the first may have been begun by the
        # chunk before, the last may be left for the next one
        dsts, left = [], n
        while i < len(views) and left >= len(views[i]) - pos:
            dsts.append(views[i][pos:])
            left -= len(views[i]) - pos
            i, pos = i + 1, 0
        if left:
            dsts.append(views[i][pos : pos + left])
        crcs = crc.copy_into(src, dsts, self._crc)
        if left:
            self._crc, self._pos = crcs.pop(), pos + left
        else:
            self._crc, self._pos = 0, 0
        self.crcs.extend(crcs)
        self._i = i


def _gcs_usable(cls) -> bool:
    return all(hasattr(cls, a) for a in ("_set_session", "_get_headers", "_get_params", "url", "session", "split_path"))


async def _gcs_read_into(self, path, start, end, sink):
    """GET ``path``'s bytes [start, end) into ``sink`` (gcsfs: ``_cat_file_sequential`` and
    ``_request``, with the body streamed instead of read whole)."""
    from gcsfs.retry import validate_response

    zonal = getattr(self, "_is_zonal_bucket", None)  # gcsfs's ExtendedGcsFileSystem
    if zonal is not None and await zonal(self.split_path(path)[0]):
        # zonal buckets are read over gRPC, which only gcsfs speaks: its answer, copied once
        sink.write(await self._cat_file(path, start=start, end=end))
        return
    await self._set_session()
    headers = self._get_headers({"Range": f"bytes={start}-{end - 1}"})
    async with self.session.request(
        method="GET", url=self.url(path), params=self._get_params({}), headers=headers, timeout=self.requests_timeout
    ) as r:
        if r.status >= 400:
            validate_response(r.status, await r.read(), path)
        while chunk := await r.content.readany():
            sink.write(chunk)


def _s3_usable(cls) -> bool:
    return all(hasattr(cls, a) for a in ("_call_s3", "split_path"))


async def _s3_read_into(self, path, start, end, sink):
    """GET ``path``'s bytes [start, end) into ``sink`` (s3fs: ``_cat_file``, with the body
    streamed instead of read whole)."""
    import aiohttp  # s3fs's own dependency, through aiobotocore
    from s3fs.core import version_id_kw

    bucket, key, version = self.split_path(path)
    resp = await self._call_s3(
        "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **version_id_kw(version)
    )
    body = resp["Body"]
    try:
        raw = getattr(body, "raw_stream", None)
        if isinstance(raw, aiohttp.ClientResponse):
            # aiohttp's stream hands out each chunk as it came off the socket; the body's own
            # read(n) joins what is buffered into a new bytes first
            while chunk := await raw.content.readany():
                sink.write(chunk)
        else:  # aiobotocore's httpx backend
            while chunk := await body.read(1 << 20):
                sink.write(chunk)
    finally:
        aclose = getattr(body, "aclose", None)  # aiobotocore's bodies: close() is a coroutine on httpx
        if aclose is not None:
            await aclose()
        else:
            body.close()


async def _gcs_connect(self):
    await self._set_session()


async def _s3_connect(self):
    await self.set_session()


def methods(kind: str, cls) -> dict:
    """The class attributes that give a single-try filesystem class of ``kind`` ("s3" or "gcs")
    its ``distrestore_read_into(path, start, end, sink, timeout=None)`` and the coroutines
    ``_distrestore_read_into`` and ``_distrestore_connect`` (the client made, as its first
    request would), names no fsspec class uses (none where this version of the library lacks
    what the reader uses)."""
    from fsspec.asyn import sync_wrapper

    readers = {"gcs": (_gcs_usable, _gcs_read_into, _gcs_connect), "s3": (_s3_usable, _s3_read_into, _s3_connect)}
    if kind not in readers or not readers[kind][0](cls):
        return {}
    _, read_into, connect = readers[kind]
    return {
        "_distrestore_read_into": read_into,
        "distrestore_read_into": sync_wrapper(read_into),
        "_distrestore_connect": connect,
    }


def coroutines(fs):
    """``(connect, read_into)``: the coroutine functions :func:`methods` gave ``fs``'s class,
    for work of its own on the filesystem's event loop; None where it gave none."""
    names = ("_distrestore_connect", "_distrestore_read_into")  # set on the class by methods() above
    found = tuple(getattr(fs, n, None) for n in names)
    return None if None in found else found
