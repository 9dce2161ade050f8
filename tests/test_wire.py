"""The protobuf wire format (``distrestore.format.wire``): varints and fields.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import pytest
from format_support import SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from distrestore.errors import CorruptCheckpointError
from distrestore.format.wire import FIXED32, LENGTH, VARINT, encode_varint, field, iter_fields, read_varint


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "80 01"),
        (300, "ac 02"),
        (2**32, "80 80 80 80 10"),
        (2**64 - 1, "ff ff ff ff ff ff ff ff ff 01"),
        (-1, "ff ff ff ff ff ff ff ff ff 01"),  # proto int64 negatives: 10-byte two's complement
    ],
)
def test_varint_known_bytes(value, encoded):
    assert encode_varint(value) == bytes.fromhex(encoded)
    decoded, pos = read_varint(bytes.fromhex(encoded) + b"\x55", 0)
    assert decoded == value & (2**64 - 1)
    assert pos == len(bytes.fromhex(encoded))


@SETTINGS
@given(st.lists(st.integers(0, 2**64 - 1), max_size=20))
def test_varint_round_trip(values):
    buf = b"".join(encode_varint(v) for v in values)
    pos, out = 0, []
    while pos < len(buf):
        v, pos = read_varint(buf, pos)
        out.append(v)
    assert out == values


def test_truncated_varint_is_corrupt():
    with pytest.raises(CorruptCheckpointError):
        read_varint(b"\x80\x80", 0)


def test_overlong_varint_is_corrupt():
    with pytest.raises(CorruptCheckpointError):
        read_varint(b"\xff" * 11 + b"\x01", 0)


def test_iter_fields_skips_and_decodes_all_wire_types():
    msg = field(1, VARINT, 5) + field(9, FIXED32, 0xDEADBEEF) + field(2, LENGTH, b"abc") + field(3, 1, 7)
    assert list(iter_fields(msg)) == [(1, VARINT, 5), (9, FIXED32, 0xDEADBEEF), (2, LENGTH, b"abc"), (3, 1, 7)]
    with pytest.raises(CorruptCheckpointError):
        list(iter_fields(field(2, LENGTH, b"abcdef")[:-2]))
