"""Slices (``distrestore.format.slices``): slice keys (ordered code) and slice specs.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from format_support import INT64, SETTINGS, tensorflow_or_skip
from hypothesis import given

from distrestore.format import sstable
from distrestore.format.slices import format_spec, parse_spec, slice_key, to_box


def test_slice_key_observed_bytes():
    assert slice_key("scope/part", ((0, 4), (0, 3))) == bytes.fromhex(
        "00 73 63 6f 70 65 2f 70 61 72 74 00 01 01 02 80 84 80 83"
    )


def test_slice_key_documented_ordered_code_examples():
    # 0x424242 -> f0 42 42 42; -0x800 -> 38 00 (ordered_code.cc)
    key = slice_key("a", ((0x424242, -0x800),))
    assert key == bytes.fromhex("00 61 00 01 01 01 f0 42 42 42 38 00")


@pytest.mark.parametrize(
    "v, enc", [(0, "80"), (3, "83"), (-1, "7f"), (-64, "40"), (63, "bf"), (64, "c0 40"), (-65, "3f bf")]
)
def test_slice_key_small_signed_numbers(v, enc):
    assert slice_key("", ((v, 0),)) == bytes.fromhex("00 00 01 01 01") + bytes.fromhex(enc) + b"\x80"


def test_slice_key_rank_and_name_escaping():
    # WriteString: 00 -> 00 ff, ff -> ff 00, then the 00 01 terminator; rank 300 -> 02 01 2c
    key = slice_key("a\x00b\xff", ())
    assert key == bytes.fromhex("00 61 00 ff 62 c3 bf 00 01 00")  # 'ÿ' is UTF-8 c3 bf
    assert slice_key("x", ((0, -1),) * 300)[:6] == bytes.fromhex("00 78 00 01 02 01")
    assert slice_key("x", ((0, -1),) * 300)[4:7] == bytes.fromhex("02 01 2c")


@SETTINGS
@given(INT64, INT64)
def test_signed_ordered_code_preserves_order(a, b):
    ka, kb = slice_key("t", ((a, 0),)), slice_key("t", ((b, 0),))
    assert (ka < kb) == (a < b)
    assert (ka == kb) == (a == b)


def test_slice_keys_match_tf_saved_slices(tmp_path):
    tf = tensorflow_or_skip()
    prefix = str(tmp_path / "s")
    specs = ["10 3 0,4:-", "10 3 4,3:0,3", "10 3 7,3:1,2", "10 3 7,3:0,1"]
    values = [tf.zeros(s, tf.float32) for s in ([4, 3], [3, 3], [3, 2], [3, 1])]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["scope/part"] * 4, shape_and_slices=specs, tensors=values)
    keys = [k for k, _ in sstable.read_table(Path(prefix + ".index").read_bytes(), prefix) if k[:1] == b"\x00"]
    ours = sorted(slice_key("scope/part", parse_spec(s)[1]) for s in specs)
    assert keys == ours


@pytest.mark.parametrize(
    "spec, shape, extents",
    [
        ("10 3 0,5:-", (10, 3), ((0, 5), (0, -1))),
        ("10 3 4,3:0,3", (10, 3), ((4, 3), (0, 3))),
        ("100 8 80,20:0,8", (100, 8), ((80, 20), (0, 8))),
        ("7 0,7", (7,), ((0, 7),)),
        ("4 5 6 -:1,2:-", (4, 5, 6), ((0, -1), (1, 2), (0, -1))),
    ],
)
def test_parse_spec(spec, shape, extents):
    assert parse_spec(spec) == (shape, extents)


@pytest.mark.parametrize("spec", ["10 3 0,5", "10 3 a,5:-", "10 3 0-5:-", "x 0,1", "10 3 0,5:-:-"])
def test_parse_spec_rejects_malformed(spec):
    with pytest.raises(ValueError):
        parse_spec(spec)


def test_format_spec_round_trip():
    shape = (10, 3)
    box = ((4, 7), (0, 3))
    spec = format_spec(shape, box)
    assert spec == "10 3 4,3:0,3"  # SaveSliceInfo.spec as observed
    s2, ext = parse_spec(spec)
    assert s2 == shape and to_box(ext, s2) == box
