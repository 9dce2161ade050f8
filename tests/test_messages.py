"""Bundle messages (``distrestore.format.messages``): entries and the header, against TF protobuf.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import pytest
from format_support import SETTINGS, tensorflow_or_skip
from hypothesis import given
from hypothesis import strategies as st

from distrestore.errors import CorruptCheckpointError, UnsupportedCheckpointError
from distrestore.format import dtypes, messages
from distrestore.format.wire import LENGTH, VARINT, field

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
    tensorflow_or_skip()
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
    tensorflow_or_skip()
    from tensorflow.core.protobuf import tensor_bundle_pb2

    for n, endian in ((1, 0), (4, 0), (2, 1)):
        h = tensor_bundle_pb2.BundleHeaderProto(num_shards=n, endianness=endian)
        h.version.producer = 1
        assert messages.encode_header(n, endian) == h.SerializeToString(deterministic=True)
        assert messages.decode_header(h.SerializeToString(), "x") == (n, endian, 1, 0, ())


def test_the_shape_cache_stays_bounded():
    for i in range(messages._SHAPE_CACHE_MAX + 100):
        e = messages.decode_entry("t", messages.encode_entry(1, (i + 1, 3), 0, 0, 12 * (i + 1), 0))
        assert e.shape == (i + 1, 3)
    assert len(messages._shape_cache) <= messages._SHAPE_CACHE_MAX
