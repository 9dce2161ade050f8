"""The read sink: where an executor's reads land, and what it reports when each is done.

Executors write into a :class:`ReadSink` and depend on nothing else of the layers below them;
``distrestore.assemble.Assembly`` is the one the library uses. An executor asks the sink for the
buffers a request's segments land in, reads into them (or copies bytes it received into them),
takes the CRC32C of the segments the sink checks (including ``SKIP`` segments of a stored entry:
the rest of a partly wanted entry, read only to verify it), and reports the request complete; the
sink answers with the outputs that completed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..readplan import ReadRequest, SegmentKind

__all__ = ["Allocator", "ReadSink"]

Allocator = Callable[["SegmentKind", int, int], "np.ndarray | None"]
"""``allocate(kind, target, nbytes)``: a writable uint8 array of ``nbytes`` for the buffer that
segments of ``kind`` with that ``target`` land in (the output for ``DIRECT``, the staging buffer
for ``STAGED``, the packed group's buffer for ``PACKED``), or None for ordinary numpy memory. An
executor that wants reads to land in memory of its own (a shared-memory arena) supplies one."""


class ReadSink(Protocol):
    ready: list[int]
    """Outputs complete before any read (nothing to read): an executor yields them first."""

    def buffers(self, req: ReadRequest) -> list[memoryview]:
        """Writable buffers, one per segment of ``req``, in order; ``SKIP`` segments get
        scratch, each its own part of it (their checksum may be taken after the read)."""

    def segment_checks(self, req: ReadRequest) -> tuple[bool, ...]:
        """Per segment of ``req``: whether its CRC32C is taken (its stored entry is verified).
        ``SKIP`` segments with an entry are checked too: they are bytes read only to verify it,
        never shipped or placed, but their checksum must reach ``complete``."""

    def checksums(self, req: ReadRequest, views: Sequence, known: Sequence[int] | None = None) -> list[int | None]:
        """The CRC32C of every checked segment (None for the others); ``known``: the CRC32C of
        every view where the read computed them on the way."""

    def complete(self, req: ReadRequest, crcs: Sequence[int | None]) -> list[int]:
        """Record ``req`` done with these segment CRCs; the outputs it completed. Raises
        ``ChecksumMismatchError`` when a stored entry's bytes do not match its checksum."""

    def tensor_names(self, req: ReadRequest, limit: int = 3) -> str:
        """The tensors ``req`` reads, for error messages."""
