"""Build the optional C accelerators; everything else is in pyproject.toml.

``optional=True``: where no compiler is available (or, for ``_readcrc``, the target is not x86-64)
the build goes on and distrestore uses its pure-Python paths (same results, slower):
``_speedups`` parses indexes with 10^5 entries; ``_readcrc`` copies local ranges out of the page
cache and CRC32C-checksums them in the same pass (it also needs SSE4.2 and PCLMULQDQ at run time).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "distrestore.format._speedups",
            ["distrestore/format/_speedups.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
        Extension(
            "distrestore.format._readcrc", ["distrestore/format/_readcrc.c"], optional=True, extra_compile_args=["-O3"]
        ),
    ]
)
