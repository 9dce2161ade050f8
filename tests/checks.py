"""Assertions shared by the tests, and what they compare with."""

from __future__ import annotations

import json

import numpy as np


def assert_bit_exact(ours, want, what=""):
    """Same dtype, shape and bytes (strings: the same bytes elements; a scalar string: bytes)."""
    if isinstance(want, bytes):
        assert type(ours) is bytes and ours == want, what
        return
    a, b = np.asarray(ours), np.asarray(want)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if b.dtype == object:
        assert [bytes(x) for x in a.ravel()] == [bytes(x) for x in b.ravel()], what
    else:
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


def assert_one_line_error(err: str, *fragments: str) -> None:
    """``err`` (a command's stderr) is one line, holds every fragment, and has no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in err


def load_expected(fixtures_dir, name):
    """(prefix, expected.json) of the TF-written fixture ``name``."""
    d = fixtures_dir / name
    exp = json.loads((d / "expected.json").read_text())
    return str(d / exp["prefix"]), exp


def read_range(storage, url: str, start: int, end: int) -> tuple[bytes, str]:
    """``storage.read(url, start, end)`` and the storage's type name; importable by a child
    process (``multiprocessing`` spawn), to check a pickled Storage works elsewhere."""
    return storage.read(url, start, end), type(storage).__name__
