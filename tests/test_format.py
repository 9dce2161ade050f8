"""Unit tests of the pure format layer (``distrestore.format``): checksums, varints, tables,
slice keys, bundle messages, string tensors, slice specs and the ``checkpoint`` state file.

Known values come from ``docs/tf-checkpoint-format.md`` (observed bytes of real TF output) and
from the committed TF fixtures; where TF is importable, encoders are also compared with TF's own
protobuf classes and text format.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distrestore as dr
from distrestore.errors import ChecksumMismatchError, CorruptCheckpointError, UnsupportedCheckpointError
from distrestore.format import crc, dtypes, messages, sstable, strings
from distrestore.format.slices import format_spec, parse_spec, slice_key, to_box
from distrestore.format.state import CheckpointState, format_state, parse_state
from distrestore.format.wire import FIXED32, LENGTH, VARINT, encode_varint, field, iter_fields, read_varint
from distrestore.index import CheckpointIndex

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


# -- crc32c ------------------------------------------------------------------------------------


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


# -- varints -----------------------------------------------------------------------------------


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


# -- sstable -----------------------------------------------------------------------------------


def _keys(n, prefix=b""):
    return [prefix + b"%06d" % i for i in range(n)]


def test_table_round_trip_small():
    items = [(b"", b"header"), (b"a", b"1"), (b"a/b", b""), (b"b\x00c", b"\xff" * 10)]
    data = sstable.build_table(items)
    assert data[-8:] == bytes.fromhex("57 fb 80 8b 24 75 47 db")  # magic, observed on disk
    assert sstable.read_table(data, "t.index") == items


def test_table_empty_metaindex_block_like_tf():
    data = sstable.build_table([(b"", b"h")])
    footer = data[-48:]
    meta_off, pos = read_varint(footer, 0)
    meta_size, _ = read_varint(footer, pos)
    assert data[meta_off : meta_off + meta_size] == bytes.fromhex("00000000 01000000")


def test_table_many_entries_span_several_blocks():
    items = [(k, os.urandom(50)) for k in _keys(3000)]
    data = sstable.build_table(items, block_size=4096)
    blocks = list(sstable.read_blocks(data, "t.index"))
    assert len(blocks) > 10
    assert sstable.read_table(data, "t.index") == items


def test_table_with_default_block_size_spans_blocks():
    # over 262144 bytes of entries: TF's block size gives at least two data blocks
    items = [(k, bytes(200)) for k in _keys(2000, b"scope/")]
    data = sstable.build_table(items)
    assert len(list(sstable.read_blocks(data, "t.index"))) >= 2
    assert sstable.read_table(data, "t.index") == items


def test_table_keys_with_long_shared_prefixes():
    base = b"very/long/shared/prefix/" * 20
    keys = sorted({base + bytes([c]) * n for c in (0x00, 0x41, 0xFE, 0xFF) for n in range(1, 40)})
    items = [(k, k[-3:]) for k in keys]
    for block_size in (64, 1024, sstable.BLOCK_SIZE):
        data = sstable.build_table(items, block_size=block_size)
        assert sstable.read_table(data, "t.index") == items


@SETTINGS
@given(st.dictionaries(st.binary(max_size=40), st.binary(max_size=300), max_size=200), st.sampled_from([32, 512, 4096]))
def test_table_round_trip_property(d, block_size):
    items = sorted(d.items())
    assert sstable.read_table(sstable.build_table(items, block_size=block_size), "t.index") == items


def _index_handle(data: bytes) -> tuple[int, int]:
    footer = data[-48:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    off, pos = read_varint(footer, pos)
    size, _ = read_varint(footer, pos)
    return off, size


@pytest.mark.parametrize(
    "name", ["all_dtypes/all", "many_small/many", "tf1_sharded/model.ckpt-7", "merged/merged", "tf2_keras/ckpt-1"]
)
def test_table_rebuilt_from_tf_index_matches_tf_bytes(name):
    """Our table builder lays out data blocks and the metaindex byte-for-byte as TF's TableBuilder
    (only the last index-block separator may differ: TF shortens it with FindShortSuccessor)."""
    data = (FIXTURES / (name + ".index")).read_bytes()
    items = sstable.read_table(data, name)
    assert items[0][0] == b"" and len(items) > 3
    rebuilt = sstable.build_table(items)
    tf_index_off, _ = _index_handle(data)
    our_index_off, _ = _index_handle(rebuilt)
    assert tf_index_off == our_index_off
    assert rebuilt[:tf_index_off] == data[:tf_index_off]


def test_table_header_entry_bytes_match_spec_example():
    data = sstable.build_table([(b"", messages.encode_header(1))])
    assert data[:9] == bytes.fromhex("00 00 06 08 01 1a 02 08 01")


def test_table_too_short_and_bad_magic():
    with pytest.raises(CorruptCheckpointError, match="too short"):
        sstable.read_table(b"\x00" * 47, "x.index")
    data = bytearray(sstable.build_table([(b"", b"h")]))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptCheckpointError, match="bad magic"):
        sstable.read_table(bytes(data), "x.index")


def test_table_block_checksum_is_verified():
    data = bytearray(sstable.build_table([(b"", b"h"), (b"key", b"value")]))
    data[4] ^= 0x01
    with pytest.raises(CorruptCheckpointError, match="block checksum mismatch") as e:
        sstable.read_table(bytes(data), "some/x.index")
    assert "some/x.index" in str(e.value)


# -- slice keys (ordered code) ------------------------------------------------------------------


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
    tf = _tf()
    prefix = str(tmp_path / "s")
    specs = ["10 3 0,4:-", "10 3 4,3:0,3", "10 3 7,3:1,2", "10 3 7,3:0,1"]
    values = [tf.zeros(s, tf.float32) for s in ([4, 3], [3, 3], [3, 2], [3, 1])]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["scope/part"] * 4, shape_and_slices=specs, tensors=values)
    keys = [k for k, _ in sstable.read_table(Path(prefix + ".index").read_bytes(), prefix) if k[:1] == b"\x00"]
    ours = sorted(slice_key("scope/part", parse_spec(s)[1]) for s in specs)
    assert keys == ours


# -- bundle messages ---------------------------------------------------------------------------

_SLICE = st.lists(st.tuples(st.integers(0, 2**40), st.one_of(st.just(-1), st.integers(0, 2**40))), max_size=4).map(
    tuple
)


@SETTINGS
@given(
    st.sampled_from(sorted(dtypes.BY_ENUM)),
    st.lists(st.integers(0, 2**40), max_size=5),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
    st.integers(0, 2**32 - 1),
    st.lists(_SLICE, max_size=3),
)
def test_entry_round_trip(dt, shape, shard, offset, size, checksum, slices):
    raw = messages.encode_entry(dt, shape, shard, offset, size, checksum, slices)
    e = messages.decode_entry("n", raw)
    assert e.dtype.enum == dt
    assert e.shape == tuple(shape)
    assert (e.shard_id, e.offset, e.size, e.crc32c) == (shard, offset, size, checksum)
    assert e.slices == tuple(tuple(s) for s in slices)


def test_entry_decode_defaults_and_unknown_fields():
    # proto3: absent fields are defaults; unknown fields (e.g. field 99, fixed64) are skipped
    raw = field(1, VARINT, 1) + field(99, 1, 123) + field(100, LENGTH, b"zz")
    e = messages.decode_entry("x", raw)
    assert (e.dtype.name, e.shape, e.shard_id, e.offset, e.size, e.crc32c, e.slices) == ("float32", (), 0, 0, 0, 0, ())


def test_entry_unknown_dtype_is_unsupported_and_names_tensor():
    with pytest.raises(UnsupportedCheckpointError, match="my/tensor"):
        messages.decode_entry("my/tensor", messages.encode_entry(999, [2]))


def test_entry_truncated_is_corrupt():
    raw = messages.encode_entry(1, [2, 3], 0, 10, 24, 12345)
    with pytest.raises(CorruptCheckpointError, match="w/x"):
        messages.decode_entry("w/x", raw[:-2])


@pytest.mark.parametrize(
    "kw",
    [
        dict(dtype_enum=1, shape=[2, 3], shard_id=0, offset=0, size=24, crc32c=0x12345678),
        dict(dtype_enum=7, shape=[], shard_id=3, offset=1 << 40, size=4, crc32c=1),
        dict(dtype_enum=19, shape=[0, 5, 0], shard_id=0, offset=7, size=0, crc32c=0),
        dict(dtype_enum=1, shape=[10, 3], slices=[((0, 5), (0, -1)), ((5, 5), (0, -1))]),
        dict(dtype_enum=9, shape=[7, 2], slices=[((0, 3), (0, 2)), ((3, 0), (1, 1))]),
    ],
)
def test_entry_encoding_matches_tf_protobuf(kw):
    _tf()
    from tensorflow.core.protobuf import tensor_bundle_pb2

    p = tensor_bundle_pb2.BundleEntryProto()
    p.dtype = kw["dtype_enum"]
    p.shape.SetInParent()  # BundleWriter always sets the shape, so a scalar has an empty one
    for d in kw["shape"]:
        p.shape.dim.add().size = d
    p.shard_id = kw.get("shard_id", 0)
    p.offset = kw.get("offset", 0)
    p.size = kw.get("size", 0)
    p.crc32c = kw.get("crc32c", 0)
    for s in kw.get("slices", ()):
        sl = p.slices.add()
        for start, length in s:
            ext = sl.extent.add()
            ext.start = start
            if length != -1:
                ext.length = length
    assert messages.encode_entry(**kw) == p.SerializeToString(deterministic=True)
    if not kw.get("slices"):
        assert messages.decode_entry("n", p.SerializeToString()).shape == tuple(kw["shape"])


def test_header_encoding_matches_tf_protobuf():
    _tf()
    from tensorflow.core.protobuf import tensor_bundle_pb2

    for n, endian in ((1, 0), (4, 0), (2, 1)):
        h = tensor_bundle_pb2.BundleHeaderProto(num_shards=n, endianness=endian)
        h.version.producer = 1
        assert messages.encode_header(n, endian) == h.SerializeToString(deterministic=True)
        assert messages.decode_header(h.SerializeToString(), "x") == (n, endian, 1, 0, ())


def _index_with_header(version: bytes) -> bytes:
    return sstable.build_table(
        [(b"", field(1, VARINT, 1) + field(3, LENGTH, version)), (b"t", messages.encode_entry(1, [1], 0, 0, 4, 0))]
    )


@pytest.mark.parametrize(
    "version, message",
    [
        (field(1, VARINT, -1), "producer"),
        (field(1, VARINT, 1) + field(2, VARINT, 2), "reader version 2"),
        (field(1, VARINT, 1) + field(3, VARINT, 0) + field(3, VARINT, 1), "disallows"),
        (field(1, VARINT, 1) + field(3, LENGTH, encode_varint(5) + encode_varint(1)), "disallows"),  # packed
    ],
)
def test_header_version_checks(version, message):
    with pytest.raises(UnsupportedCheckpointError, match=message) as e:
        CheckpointIndex.from_bytes("/some/ckpt", _index_with_header(version))
    assert "/some/ckpt.index" in str(e.value)


@pytest.mark.parametrize(
    "version",
    [
        field(1, VARINT, 1),
        field(1, VARINT, 0) + field(2, VARINT, 1),
        field(1, VARINT, 7) + field(2, VARINT, 0) + field(3, VARINT, 0) + field(3, VARINT, 2),
    ],
)
def test_header_versions_accepted(version):
    idx = CheckpointIndex.from_bytes("/some/ckpt", _index_with_header(version))
    assert list(idx.entries) == ["t"]


# -- string tensors ----------------------------------------------------------------------------

STRINGS = [b"", b"\x00", b"\xff\xfe", "héllo wörld".encode(), b"x" * 301, b"a\x00b"]


def test_strings_layout_and_both_checksums():
    data, entry_crc = strings.encode_strings([b"ab", b"", b"xyz"])
    lens = bytes.fromhex("02 00 03")
    len_crc = crc.mask(crc.value(struct.pack("<III", 2, 0, 3)))
    assert data == lens + struct.pack("<I", len_crc) + b"abxyz"
    running = crc.value(struct.pack("<III", 2, 0, 3))
    assert entry_crc == crc.mask(crc.value(struct.pack("<I", len_crc) + b"abxyz", running))


def test_empty_string_tensor_is_four_bytes():
    data, c = strings.encode_strings([])
    assert len(data) == 4
    out = strings.decode_strings(data, 0, (0,), stored_crc=c, where="t")
    assert out.shape == (0,) and out.dtype == object


@SETTINGS
@given(st.lists(st.binary(max_size=400), max_size=12))
def test_strings_round_trip(values):
    data, c = strings.encode_strings(values)
    out = strings.decode_strings(data, len(values), (len(values),), stored_crc=c, where="t")
    assert list(out) == values


def test_strings_long_values():
    values = [b"\x01" * 70_000, b"", b"\xff" * 300]
    data, c = strings.encode_strings(values)
    assert data[:3] == encode_varint(70_000)
    out = strings.decode_strings(data, 3, (3,), stored_crc=c, where="t")
    assert list(out) == values


def test_strings_corrupt_length_checksum():
    data, c = strings.encode_strings(STRINGS)
    bad = bytearray(data)
    n_len = len(b"".join(encode_varint(len(s)) for s in STRINGS))
    bad[n_len] ^= 0x01  # first byte of the stored length checksum
    with pytest.raises(ChecksumMismatchError, match="length"):
        strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=c, where="t 'x'")


def test_strings_corrupt_body_checksum():
    data, c = strings.encode_strings(STRINGS)
    bad = bytearray(data)
    bad[-1] ^= 0x01
    with pytest.raises(ChecksumMismatchError, match="where-it-is"):
        strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=c, where="where-it-is")
    # without verification, the corrupt bytes come back as they are
    out = strings.decode_strings(bytes(bad), len(STRINGS), (len(STRINGS),), stored_crc=None, where="t")
    assert out[-1] != STRINGS[-1]


def test_strings_wrong_size_is_corrupt():
    data, c = strings.encode_strings([b"abc"])
    with pytest.raises(CorruptCheckpointError):
        strings.decode_strings(data + b"x", 1, (1,), stored_crc=c, where="t")
    with pytest.raises(CorruptCheckpointError):
        strings.decode_strings(data[:3], 1, (1,), stored_crc=c, where="t")


def test_string_encoding_matches_tf_written_bytes():
    """Our encoder reproduces TF's data bytes and entry CRC for every string tensor in a fixture."""
    prefix = FIXTURES / "all_dtypes" / "all"
    items = dict(sstable.read_table((FIXTURES / "all_dtypes" / "all.index").read_bytes(), "all.index"))
    blob = (FIXTURES / "all_dtypes" / "all.data-00000-of-00001").read_bytes()
    checked = 0
    for key, raw in items.items():
        if not key:
            continue
        e = messages.decode_entry(key.decode(), raw)
        if not e.dtype.is_string:
            continue
        stored = blob[e.offset : e.offset + e.size]
        values = strings.decode_strings(stored, e.num_elements, e.shape, stored_crc=e.crc32c, where=str(prefix))
        data, c = strings.encode_strings(values.reshape(-1).tolist())
        assert data == stored and c == e.crc32c, key
        checked += 1
    assert checked >= 6


# -- dtypes ------------------------------------------------------------------------------------


def test_dtype_table_matches_tf():
    tf = _tf()
    for enum, d in dtypes.BY_ENUM.items():
        tdt = tf.dtypes.as_dtype(enum)
        assert tdt.name == d.name, enum
        if d.fixed_width and not d.name.startswith("q"):
            assert np.dtype(tdt.as_numpy_dtype) == d.numpy, d.name


def test_dtype_from_numpy_and_resolve():
    import ml_dtypes

    assert dtypes.from_numpy(np.float32).enum == 1
    assert dtypes.from_numpy(">f4").enum == 1
    assert dtypes.from_numpy(ml_dtypes.bfloat16).name == "bfloat16"
    assert dtypes.from_numpy(np.int8).name == "int8"  # never a quantized type
    assert dtypes.from_numpy(object).is_string
    assert dtypes.resolve("half").enum == 19
    with pytest.raises(UnsupportedCheckpointError):
        dtypes.from_numpy(np.dtype("datetime64[s]"))
    with pytest.raises(UnsupportedCheckpointError, match="999"):
        dtypes.from_enum(999)


# -- slice specs -------------------------------------------------------------------------------


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


# -- the checkpoint state file -------------------------------------------------------------------


def test_parse_state_observed_manager_file():
    text = (FIXTURES / "manager" / "checkpoint").read_text()
    s = parse_state(text)
    assert s.model_checkpoint_path == "ckpt-4"
    assert s.all_model_checkpoint_paths == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert s.all_model_checkpoint_timestamps == [1795364626.2103877, 1795364626.2156065, 1795364626.220658]
    assert s.last_preserved_timestamp == 1795364625.197822


def test_parse_state_escapes():
    text = (
        'model_checkpoint_path: "dir with \\"quote\\"/caf\\303\\251\\\\x"\n'
        "all_model_checkpoint_paths: 'single\\'q'\n"
        'all_model_checkpoint_paths: "tab\\there\\nnl"\n'
        "# a comment\n"
        "last_preserved_timestamp: 1e3\n"
    )
    s = parse_state(text)
    assert s.model_checkpoint_path == 'dir with "quote"/café\\x'
    assert s.all_model_checkpoint_paths == ["single'q", "tab\there\nnl"]
    assert s.last_preserved_timestamp == 1000.0


def test_parse_state_hash_inside_a_quoted_path_is_not_a_comment():
    text = (
        'model_checkpoint_path: "/data/run#3/ckpt-1"  # the latest\n'
        '# a whole-line comment with a "quote\n'
        "all_model_checkpoint_paths: '/data/run#3/ckpt-1';\n"
    )
    s = parse_state(text)
    assert s.model_checkpoint_path == "/data/run#3/ckpt-1"
    assert s.all_model_checkpoint_paths == ["/data/run#3/ckpt-1"]


def test_parse_state_garbage_is_corrupt():
    with pytest.raises(CorruptCheckpointError, match="my/checkpoint"):
        parse_state("model_checkpoint_path: {{{", "my/checkpoint")


def test_format_state_round_trip():
    s = CheckpointState('a "b"\\c/é\n', ["x", 'a "b"\\c/é\n'], [1.5, 2.25], 3.0)
    assert parse_state(format_state(s)) == s


def _write_state_with_tf(tf, directory: str, latest: str, all_paths: list[str]):
    from tensorflow.python.checkpoint import checkpoint_management

    checkpoint_management.update_checkpoint_state_internal(directory, latest, all_paths)


def test_state_file_written_by_tf_text_format(tmp_path):
    """TF's text format (octal escapes for non-ASCII, escaped quotes) parses to TF's own values."""
    tf = _tf()
    d = tmp_path / "ckpts"
    d.mkdir()
    names = ['ckpt-"1"', "ckpt-é-2", "ckpt\\3"]
    _write_state_with_tf(tf, str(d), names[-1], names)
    theirs = tf.train.get_checkpoint_state(str(d))
    ours = dr.get_checkpoint_state(str(d))
    assert ours.model_checkpoint_path == theirs.model_checkpoint_path == os.path.join(str(d), names[-1])
    assert ours.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)


PATH_TEXT = st.one_of(
    st.text(st.sampled_from(list("#\"'\\\n\t/ :é漢\x00\x7fab")), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
)


@SETTINGS
@given(PATH_TEXT, st.lists(PATH_TEXT, max_size=4), st.lists(st.floats(allow_nan=False), max_size=4), st.booleans())
def test_parse_state_matches_protobuf_text_format(latest, paths, stamps, as_utf8):
    """Any paths (quotes, backslashes, '#', control and non-ASCII characters) written by
    protobuf's text format parse back to the same values."""
    _tf()
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    proto = checkpoint_state_pb2.CheckpointState(
        model_checkpoint_path=latest,
        all_model_checkpoint_paths=paths,
        all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=stamps[0] if stamps else 0.0,
    )
    s = parse_state(text_format.MessageToString(proto, as_utf8=as_utf8))
    assert s.model_checkpoint_path == latest
    assert s.all_model_checkpoint_paths == paths
    assert s.all_model_checkpoint_timestamps == [float(np.float64(x)) for x in stamps]
    assert s.last_preserved_timestamp == (stamps[0] if stamps else 0.0)


def test_state_relative_and_absolute_paths_joined_like_tf(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    absolute = str(tmp_path / "elsewhere" / "model.ckpt-7")
    (d / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-2"\n'
        f'all_model_checkpoint_paths: "{absolute}"\n'
        f'all_model_checkpoint_paths: "sub/ckpt-1"\n'
        f'all_model_checkpoint_paths: "ckpt-2"\n'
    )
    s = dr.get_checkpoint_state(str(d))
    assert s.model_checkpoint_path == os.path.join(str(d), "ckpt-2")
    assert s.all_model_checkpoint_paths == [
        absolute,
        os.path.join(str(d), "sub/ckpt-1"),
        os.path.join(str(d), "ckpt-2"),
    ]
    try:
        tf = _tf()
    except pytest.skip.Exception:
        return
    theirs = tf.train.get_checkpoint_state(str(d))
    assert s.model_checkpoint_path == theirs.model_checkpoint_path
    assert s.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)


def test_state_missing_file_and_empty_latest(tmp_path):
    assert dr.get_checkpoint_state(str(tmp_path)) is None
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "x"\n')
    with pytest.raises(ValueError, match="Invalid checkpoint state"):  # TF raises ValueError too
        dr.get_checkpoint_state(str(tmp_path))


def test_state_custom_latest_filename(tmp_path):
    (tmp_path / "my_state").write_text('model_checkpoint_path: "a"\n')
    assert dr.get_checkpoint_state(str(tmp_path)) is None
    s = dr.get_checkpoint_state(str(tmp_path), "my_state")
    assert s.model_checkpoint_path == os.path.join(str(tmp_path), "a")
