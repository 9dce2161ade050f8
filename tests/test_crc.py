"""Checksums (``distrestore.format.crc``): CRC32C values, masking and combining.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import os

import numpy as np
from format_support import SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from distrestore.format import crc


def test_crc32c_check_value():
    assert crc.value(b"123456789") == 0xE3069283
    assert crc.value(b"") == 0


def test_crc32c_continues_from_a_previous_value():
    assert crc.value(b"56789", crc.value(b"1234")) == 0xE3069283


def test_crc32c_accepts_any_buffer():
    data = np.arange(100, dtype=np.uint8)
    assert crc.value(memoryview(data)) == crc.value(data.tobytes()) == crc.value(bytearray(data.tobytes()))


def test_mask_known_value():
    # mask(c) = rotr15(c) + 0xa282ead8
    c = 0xE3069283
    rot = ((c >> 15) | (c << 17)) & 0xFFFFFFFF
    assert crc.mask(c) == (rot + 0xA282EAD8) & 0xFFFFFFFF
    assert crc.mask(0) == 0xA282EAD8
    assert crc.mask(c) != c


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mask_unmask_round_trip(c):
    assert crc.unmask(crc.mask(c)) == c
    assert 0 <= crc.mask(c) < 2**32


@SETTINGS
@given(st.binary(max_size=3000), st.data())
def test_combine_matches_direct_crc(data, draw):
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    combined = 0
    for p in pieces:
        combined = crc.combine(combined, crc.value(p), len(p))
    assert combined == crc.value(data)


def test_combine_with_large_lengths():
    a, b = os.urandom(1000), bytes(1 << 20) + b"x"
    assert crc.combine(crc.value(a), crc.value(b), len(b)) == crc.value(a + b)
