"""Build the optional C accelerator for index parsing; everything else is in pyproject.toml.

``optional=True``: where no compiler is available the build goes on and distrestore uses the
pure-Python loop (same results, slower on indexes with 10^5 entries).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("distrestore.format._speedups", ["distrestore/format/_speedups.c"],
                             optional=True, extra_compile_args=["-O3"])])
