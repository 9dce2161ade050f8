"""The CRC32C kernels of the native checksum module this CPU runs, and a fixture over them (for
tests/test_native_checksum.py and tests/test_native_mapped_read.py, whose copies fold it in)."""

from __future__ import annotations

import pytest

try:
    from distrestore._native import _checksum as checksum
except ImportError:  # not built, or a CPU without SSE4.2/PCLMULQDQ: the tests using it skip
    checksum = None

KERNELS = (
    [k for k in ("avx2-vpclmulqdq", "sse4.2-pclmul") if k == "sse4.2-pclmul" or checksum.KERNEL == "avx2-vpclmulqdq"]
    if checksum is not None
    else []
)


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Run the test with each kernel in turn, the best one put back afterwards."""
    best = checksum.KERNEL
    checksum.use_kernel(request.param)
    yield request.param
    checksum.use_kernel(best)
