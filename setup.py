"""Build the optional C modules; everything else is in pyproject.toml.

Their sources live together in ``distrestore/_native/`` (docs/native.md describes them), one module
per concern, each behind a Python facade that falls back to pure Python with identical results:

- ``_checksum``: CRC32C value, combine and the batched check of packed small tensors
  (facade ``distrestore.format.crc``; x86-64 with SSE4.2 and PCLMULQDQ);
- ``_index_decode``: an index's entry blocks into numpy columns (facade
  ``distrestore.format.entry_table``; any platform);
- ``_mapped_read``: local ranges copied out of the page cache and checksummed in the same pass
  (facade ``distrestore._native.mapped_read``; Linux x86-64, uses ``_checksum``'s kernels).

``optional=True``: where no compiler is available, or the target lacks what a module needs, the
build goes on without it.
"""

from setuptools import Extension, setup


def _native(name: str) -> Extension:
    return Extension(
        f"distrestore._native._{name}",
        [f"distrestore/_native/{name}.c"],
        depends=["distrestore/_native/checksum_api.h"],
        optional=True,
        extra_compile_args=["-O3"],
    )


setup(ext_modules=[_native("checksum"), _native("index_decode"), _native("mapped_read")])
