"""Local reads that copy a file range out of the page cache and CRC32C it in the same pass.

The facade of the compiled ``_mapped_read`` (docs/native.md has the design and its SIGBUS guard).
``available``: whether it is built and usable here (x86-64 with SSE4.2 and PCLMULQDQ; tests set it
to False to run the caller's ``os.preadv`` path). No signal handler of it stays installed once a
read has returned.
"""

from __future__ import annotations

try:
    from . import _mapped_read as _native
except ImportError:  # not built (no compiler, not x86-64) or a CPU without SSE4.2/PCLMULQDQ
    _native = None

available = _native is not None


def read(fd: int, offset: int, buffers) -> list[int]:
    """Fill ``buffers`` (writable, consecutive in the file from ``offset``) and return the
    (unmasked) CRC32C of each. Partial reads continue; at end of file EOFError("end of file at
    byte N"), or EOFError("file truncated while reading, at byte N (the file now has S bytes)")
    when the file shrinks during the copy; other failures OSError. Only where ``available``."""
    return _native.read(fd, offset, buffers)
