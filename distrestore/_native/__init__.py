"""Optional compiled modules, one per concern, each behind a Python facade that falls back to pure
Python with identical results where the module is not built (docs/native.md):

- ``_checksum``: CRC32C value, combine and batched check (facade: ``distrestore.format.crc``);
- ``_index_decode``: index blocks into columns (facade: ``distrestore.format.entry_table``);
- ``_mapped_read``: local reads copied out of the page cache and checksummed in one pass
  (facade: ``distrestore._native.mapped_read``).

Their C sources live here too; ``setup.py`` builds them.
"""
