"""Paths and URLs: local paths and fsspec URLs joined, split and compared the same way everywhere."""

from __future__ import annotations

import os


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def protocol_of(url: str) -> str:
    """``"file"`` for local paths and ``file://`` URLs, else the URL's scheme."""
    return "file" if is_local(url) else url.split("://", 1)[0]


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs alike (URLs always use '/')."""
    if is_local(base):
        return os.path.join(base, *parts)
    out = base
    for p in parts:
        out = p if "://" in p else out.rstrip("/") + "/" + p.lstrip("/")
    return out


def dirname(url: str) -> str:
    if is_local(url):
        return os.path.dirname(url)
    return url.rstrip("/").rsplit("/", 1)[0]


def bucket_of(url: str) -> tuple[str, str]:
    """``(scheme, bucket)`` of an object-store URL (the first path component after the scheme)."""
    scheme, rest = url.split("://", 1)
    return scheme, rest.lstrip("/").split("/", 1)[0]
