"""Optional compiled modules, one per concern, each behind a Python facade that falls back to pure
Python with identical results where the module is not built (docs/native.md):

- ``checksum`` (``_checksum``): CRC32C value, combine and batched check; facade ``format.crc``;
- ``index_decode`` (``_index_decode``): index blocks into columns; facade ``format.entry_table``;
- ``_mapped_read``: local reads copied out of the page cache and checksummed in one pass; facade
  ``_native.mapped_read``.

``checksum`` and ``index_decode`` are the compiled modules, or None where they are not built or
cannot run on this CPU. Their C sources live here too; ``setup.py`` builds them.
"""

try:
    from . import _checksum as checksum
except ImportError:  # not built (no compiler, not x86-64) or a CPU without SSE4.2/PCLMULQDQ
    checksum = None

try:
    from . import _index_decode as index_decode
except ImportError:  # not built (no compiler at install time)
    index_decode = None
