"""A catalogue of hand-built hostile checkpoints, one named test each: every one ends in one of
the library's errors, of the class a user would catch, naming the file and (where there is one)
the tensor, within bounded time and memory; and both index decoders give the same verdict.

Each case runs in a child process (``fuzz.worker``) under a memory cap of 64 MiB + 4 x the
files' sizes, so that a regression fails the test instead of filling the machine. Where TF is
importable, the TF differential tests check the behaviours TF defines (the first of repeated keys
wins; a slice past the full shape, a negative dimension, a wrapping shape are refused).
docs/hostile-input.md lists the rules these exercise.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from fuzz import hostile as h
from fuzz.harness import Worker, memory_bound

from distrestore.format import crc, sstable
from distrestore.format.slices import slice_key

INDEX, DATA = "c.index", "c.data-00000-of-00001"
CORRUPT = "distrestore.errors.CorruptCheckpointError"
UNSUPPORTED = "distrestore.errors.UnsupportedCheckpointError"
STORAGE = "distrestore.errors.StorageError"
NOT_FOUND = "distrestore.errors.CheckpointNotFoundError"


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def case(entries: dict, data: bytes = b"", num_shards: int = 1, hdr: bytes | None = None, **kw) -> h.Case:
    return h.Case(h.tensor_table(entries, num_shards, hdr, **kw), ((h.data_name(0, num_shards), data),))


def raw_case(index: bytes, data: bytes = b"") -> h.Case:
    return h.Case(index, ((h.data_name(0, 1), data),))


def refused(worker, c: h.Case, op: str, *args, error: str, names=(INDEX,), ops_ok=()):
    """Run ``op`` on the case: it must raise ``error`` (or a subclass), a library error whose
    message names ``names``, within 1 CPU-second and the memory bound, both decoders agreeing."""
    for other in ops_ok:
        ok = worker.op(c, *other)
        assert ok.error is None, (other, ok.error, ok.message)
    out = worker.op(c, op, *args)
    assert out.library, f"a non-library error: {out.error}: {out.message}"
    assert out.error is not None, f"{op} returned instead of raising {error}"
    assert error in out.mro, (out.error, out.message)
    for n in names:
        assert n in out.message, (n, out.message)
    assert out.agreed is not False, out.message
    assert out.cpu_s < 1.0, f"{out.cpu_s:.2f} CPU s"
    assert out.wall_s < 10.0, f"{out.wall_s:.2f} s"
    assert out.peak_bytes <= memory_bound(out), (out.peak_bytes, memory_bound(out))
    return out


def f32(n: int) -> tuple[bytes, int]:
    blob = np.arange(n, dtype=np.float32).tobytes()
    return blob, crc.mask(crc.value(blob))


# -- sizes that are not there --------------------------------------------------------------------


def test_huge_shape_with_a_consistent_size(worker):
    """The issue's 130-byte index: shape [10^15] float32, size 4 x 10^15, 8 bytes of data."""
    c = case({"t": h.entry(1, [10**15], 0, 0, 4 * 10**15, 0)}, bytes(8))
    assert len(c.index) < 200
    for op in ("restore", "tensor"):
        out = refused(worker, c, op, *(("t",) if op == "tensor" else ()), error=STORAGE, names=(DATA, "'t'"))
        assert "shorter than the checkpoint index says" in out.message and isinstance(out.message, str)


def test_huge_shape_of_strings_and_variants(worker):
    """A string tensor of 2^40 elements in 10 bytes; a variant of 2^40: counts beyond the bytes."""
    c = case({"s": h.entry(7, [2**40], 0, 0, 10, 0), "v": h.entry(21, [2**40], 0, 0, 10, 0)}, bytes(10))
    refused(worker, c, "tensor", "s", error=CORRUPT, names=("'s'", "needs at least"), ops_ok=[("list",)])
    refused(worker, c, "variant", "v", error=CORRUPT, names=("'v'", "needs at least"))


def test_string_and_variant_claiming_2_63_bytes(worker):
    """The issue's entries claiming 2^63 - 1 bytes: refused against the data file's size before
    any buffer is made (get_variant_records allocated the claimed size up front)."""
    c = case({"s": h.entry(7, [1], 0, 0, 2**63 - 1, 0), "v": h.entry(21, [1], 0, 0, 2**63 - 1, 0)}, bytes(16))
    refused(worker, c, "tensor", "s", error=STORAGE, names=(DATA, "'s'"))
    refused(worker, c, "variant", "v", error=STORAGE, names=(DATA, "'v'"))


def test_negative_dimension(worker):
    c = case({"t": h.entry(1, [-2], 0, 0, 8, 0), "u": h.entry(1, [2], 0, 0, 8, f32(2)[1])}, f32(2)[0])
    out = refused(worker, c, "tensor", "t", error=CORRUPT, names=("'t'", "invalid tensor shape"), ops_ok=[("list",)])
    assert "negative" in out.message
    assert worker.op(c, "tensor", "u").error is None  # the index stays usable, as in TF


@pytest.mark.parametrize(
    "shape, size",
    [([2**32, 2**32], 0), ([2**62, 4], 0), ([3, 2**62], 12), ([2**63 - 1, 2], 8)],
    ids=["2^64", "2^64-by-itemsize", "3x2^62", "2^64-2"],
)
def test_shape_product_that_wraps_int64(worker, shape, size):
    c = case({"t": h.entry(1, shape, 0, 0, size, 0)}, bytes(16))
    refused(worker, c, "restore", error=CORRUPT, names=("'t'", "2^63 - 1 elements"))


def test_empty_shape_numpy_cannot_make(worker):
    """TF accepts [0, 2^62] (no elements); numpy refuses even an empty array of it."""
    c = case({"t": h.entry(1, [0, 2**62], 0, 0, 0, 0)})
    refused(worker, c, "tensor", "t", error=UNSUPPORTED, names=("'t'", "numpy"))


def test_rank_beyond_numpy(worker):
    c = case({"t": h.entry(1, [1] * 65, 0, 0, 4, 0)}, bytes(4))
    refused(worker, c, "tensor", "t", error=UNSUPPORTED, names=("'t'", "rank 65"), ops_ok=[("list",)])


def test_size_disagrees_with_shape(worker):
    blob, c32 = f32(4)
    c = case({"t": h.entry(1, [3], 0, 0, 16, c32)}, blob)
    refused(worker, c, "restore", error=CORRUPT, names=("'t'", "invalid size"))


def test_offset_past_the_end_of_the_data_file(worker):
    c = case({"t": h.entry(1, [2], 0, 100, 8, 0)}, bytes(8))
    out = refused(worker, c, "tensor", "t", error=STORAGE, names=(DATA, "'t'", "[100, 108)"))
    assert "it has 8 bytes" in out.message


def test_offset_plus_size_overflows(worker):
    """offset + size past 2^63 (each below it) is past any file; a field past 2^63 is refused
    when the index is opened."""
    c = case({"t": h.entry(1, [2], 0, 2**63 - 4, 8, 0)}, bytes(8))
    refused(worker, c, "tensor", "t", error=STORAGE, names=(DATA, "'t'"))
    c = case({"t": h.entry(1, [2], 0, 2**63, 8, 0)}, bytes(8))
    refused(worker, c, "open", error=CORRUPT, names=(INDEX, "out of range"))


def test_small_tensor_past_the_end_takes_no_packed_read(worker):
    """Small whole tensors are read in packed groups; one past the end of its file is named too."""
    blob, c32 = f32(2)
    c = case({"a": h.entry(1, [2], 0, 0, 8, c32), "b": h.entry(1, [2], 0, 4, 8, c32)}, blob)
    refused(worker, c, "restore", error=STORAGE, names=(DATA, "'b'", "[4, 12)"))


# -- shards ------------------------------------------------------------------------------------


def test_num_shards_ten_million(worker):
    """TF names data files on demand, and so does distrestore: 10^7 shards cost nothing; a
    tensor in a shard that is not there fails by name."""
    blob, c32 = f32(2)
    n = 10**7
    ents = {"t": h.entry(1, [2], 0, 0, 8, c32), "u": h.entry(1, [2], n - 1, 0, 8, c32)}
    c = case(ents, blob, num_shards=n)
    ok = worker.op(c, "restore", ["t"])
    assert ok.error is None and ok.cpu_s < 0.5 and ok.peak_bytes < 16 << 20, ok
    refused(worker, c, "restore", error=NOT_FOUND, names=("c.data-9999999-of-10000000", "'u'"), ops_ok=[("list",)])


@pytest.mark.parametrize("n", [2**31, 2**32 + 1, 2**40, 2**64 - 1])
def test_num_shards_past_int32(worker, n):
    c = case({"t": h.entry(1, [2], 0, 0, 8, 0)}, bytes(8), hdr=h.header(n))
    refused(worker, c, "open", error=CORRUPT, names=(INDEX, "num_shards"))


@pytest.mark.parametrize("shard", [1, 5, 2**31, 2**63 - 1])
def test_shard_id_out_of_range(worker, shard):
    c = case({"t": h.entry(1, [2], shard, 0, 8, 0)}, bytes(8))
    refused(worker, c, "tensor", "t", error=CORRUPT, names=(INDEX, str(shard)))


# -- blocks --------------------------------------------------------------------------------------


def _items(n: int = 3):
    return [(b"", h.header(1))] + [(b"t%d" % i, h.entry(1, [2], 0, 0, 8, 0)) for i in range(n)]


def test_same_block_listed_20000_times(worker):
    """The issue's index listing one block 20,000 times (a 360 KB file that expanded past 6 GB)."""
    block = h.block_of(_items(300))
    index = h.assemble([block], handles=[(0, len(block))] * 20_000)
    out = refused(worker, raw_case(index, bytes(8)), "open", error=CORRUPT, names=(INDEX, "once each"))
    assert out.peak_bytes < 16 << 20


@pytest.mark.parametrize("how", ["reversed", "overlapping", "past-the-end", "into-the-index", "into-the-footer"])
def test_block_handles_out_of_order_overlapping_or_outside(worker, how):
    b0, b1 = h.block_of(_items(2)), h.block_of([(b"u", h.entry(1, [2], 0, 0, 8, 0))])
    real = [(0, len(b0)), (len(b0) + 5, len(b1))]
    end = real[1][0] + len(b1) + 5
    handles = {
        "reversed": [real[1], real[0]],
        "overlapping": [real[0], (real[0][0] + 3, real[0][1])],
        "past-the-end": [(end + 1000, 10)],
        "into-the-index": [(end + 20, 4)],
        "into-the-footer": [(end + 200, 5)],
    }[how]
    refused(worker, raw_case(h.assemble([b0, b1], handles)), "open", error=CORRUPT, names=(INDEX,))


def test_index_block_handle_past_the_footer(worker):
    raw = bytearray(h.table(_items()))
    raw[-48:-8] = (h.varint(0) + h.varint(0) + h.varint(len(raw) - 30) + h.varint(100)).ljust(40, b"\0")
    refused(worker, raw_case(bytes(raw)), "open", error=CORRUPT, names=(INDEX, "footer"))


def test_prefix_key_expansion(worker):
    """One 100 KB key shared by 20,000 more entries: 2 GB of names from a ~200 KB index."""
    long = b"k" * 100_000
    value = h.entry(1, [2], 0, 0, 8, 0)
    entries = [(0, b"", h.header(1)), (0, long, value)] + [(100_000, b"%05d" % i, value) for i in range(20_000)]
    index = h.assemble([h.raw_block(entries)])
    out = refused(worker, raw_case(index), "open", error=CORRUPT, names=(INDEX, "32 times"))
    assert out.peak_bytes < 32 * len(index) + (8 << 20)  # names decoded before the limit: at most 32 x


def test_key_sharing_more_than_the_previous_key(worker):
    entries = [(0, b"", h.header(1)), (0, b"ab", h.entry(1, [2], 0, 0, 8, 0)), (5, b"c", h.entry(1, [2], 0, 0, 8, 0))]
    refused(worker, raw_case(h.assemble([h.raw_block(entries)])), "open", error=CORRUPT, names=(INDEX, "shares more"))


def test_entry_running_past_its_block(worker):
    body = h.varint(0) + h.varint(1) + h.varint(200) + b"t" + h.entry(1, [2])
    refused(worker, raw_case(h.assemble([h.raw_block(body)])), "open", error=CORRUPT, names=(INDEX,))


@pytest.mark.parametrize("count", [0, 2**30, 2**32 - 1])
def test_bad_restart_count(worker, count):
    good = h.block_of(_items())
    bad = good[:-4] + struct.pack("<I", count)
    c = raw_case(h.assemble([bad]))
    if count == 0:  # no restarts: the entries run to the block's end, minus the count itself
        out = worker.op(c, "open")
        assert out.library and out.agreed is not False
        return
    refused(worker, c, "open", error=CORRUPT, names=(INDEX, "restart"))


def test_truncated_block(worker):
    full = h.table(_items())
    refused(worker, raw_case(full[: len(full) // 2] + full[-48:]), "open", error=CORRUPT, names=(INDEX,))


def test_bad_block_checksum(worker):
    raw = bytearray(h.table(_items()))
    raw[3] ^= 0x40
    refused(worker, raw_case(bytes(raw)), "open", error=CORRUPT, names=(INDEX, "checksum mismatch"))


def test_unknown_block_type(worker):
    block = h.block_of(_items())
    refused(worker, raw_case(h.assemble([(block, 7)])), "open", error=CORRUPT, names=(INDEX, "block type 7"))


@pytest.mark.parametrize("claimed", [2**20, 2**31, 2**32 - 1])
def test_snappy_bomb(worker, claimed):
    """A Snappy block whose preamble claims more than its bytes can expand to: refused before
    decompressing (cramjam would allocate the claim)."""
    pytest.importorskip("cramjam")
    raw = h.block_of(_items(50))
    comp = h.snappy(raw)
    bomb = h.varint(claimed) + comp[len(h.varint(len(raw))) :]
    out = refused(worker, raw_case(h.assemble([(bomb, sstable.SNAPPY)])), "open", error=CORRUPT, names=(INDEX,))
    assert "claims" in out.message


@pytest.mark.parametrize(
    "stream", [b"", b"\x05\x00", b"\x80", b"\x10" + bytes(8)], ids=["empty", "cut", "varint", "junk"]
)
def test_snappy_garbage_is_a_corrupt_index(worker, stream):
    pytest.importorskip("cramjam")
    out = refused(worker, raw_case(h.assemble([(stream, sstable.SNAPPY)])), "open", error=CORRUPT, names=(INDEX,))
    assert "cramjam" not in out.error


def test_missing_and_repeated_header(worker):
    refused(worker, raw_case(h.table(_items()[1:])), "open", error=CORRUPT, names=(INDEX, "no header"))
    items = _items()
    c = raw_case(h.table([items[0], (b"", h.header(2**40))] + items[1:]))
    assert worker.op(c, "open").error is None  # the first header wins, as TF's Seek finds it


# -- varints ---------------------------------------------------------------------------------------


def _with_offset_varint(raw_varint: bytes) -> h.Case:
    value = b"\x08\x01\x12\x04\x12\x02\x08\x02" + b"\x20" + raw_varint + b"\x28\x08"  # float32 [2], offset, size 8
    return case({"t": value, "u": h.entry(1, [2], 0, 0, 8, 0)}, bytes(8))


@pytest.mark.parametrize(
    "varint",
    [b"\xff" * 9 + b"\x7f", b"\xff" * 9 + b"\x02", b"\x80" * 10 + b"\x00", b"\xff" * 11, b"\x80"],
    ids=["10th-byte-7f", "10th-byte-2", "11-bytes", "never-ends", "truncated"],
)
def test_bad_varints(worker, varint):
    """A varint is at most 10 bytes and fits 64 bits (the C decoder once kept the low 64 bits of a
    longer one where Python raised): both decoders refuse it alike."""
    refused(worker, _with_offset_varint(varint), "open", error=CORRUPT, names=(INDEX, "'t'"))


def test_ten_byte_varints_that_fit(worker):
    """A 10-byte varint whose 10th byte is 1 fits: 2^63 + ... is past int64 (refused), 0 padded to
    10 bytes is plain 0 (read)."""
    refused(worker, _with_offset_varint(b"\x80" * 9 + b"\x01"), "open", error=CORRUPT, names=(INDEX, "out of range"))
    out = worker.op(_with_offset_varint(b"\x80" * 9 + b"\x00"), "open")
    assert out.error is None and out.agreed, out


def test_negative_dimension_as_a_ten_byte_varint(worker):
    """A dim of -1 as proto int64 writes it: 10 bytes, 10th byte 1."""
    dim = b"\x08" + b"\xff" * 9 + b"\x01"  # size: -1
    shape = b"\x12" + bytes([len(dim)]) + dim  # dim { size: -1 }
    value = b"\x08\x01\x12" + bytes([len(shape)]) + shape + b"\x28\x04"
    c = case({"t": value}, bytes(4))
    refused(worker, c, "tensor", "t", error=CORRUPT, names=("'t'", "invalid tensor shape"))


@pytest.mark.parametrize("enum", [0, 20, 999, 2**40])
def test_unknown_dtype_enum(worker, enum):
    c = case({"t": h.entry(enum, [2], 0, 0, 8, 0)}, bytes(8))
    refused(worker, c, "open", error=UNSUPPORTED, names=(INDEX, "'t'", str(enum)))


def test_entry_with_a_stray_wire_type(worker):
    c = case({"t": h.entry(1, [2], 0, 0, 8, 0, extra=b"\x4b")}, bytes(8))  # field 9, wire type 3
    refused(worker, c, "open", error=CORRUPT, names=(INDEX, "'t'"))


# -- strings and variants ----------------------------------------------------------------------------


def test_string_lengths_exceeding_the_entry(worker):
    """Lengths decoded first and checked against the entry's size: nothing is sized from them
    (their own checksum is right, so the size check is what refuses them)."""
    lengths_crc = crc.mask(crc.value(struct.pack("<QQ", 2**40, 2**40)))  # each length as uint64 > 4 GiB
    blob = h.varint(2**40) + h.varint(2**40) + struct.pack("<I", lengths_crc) + b"xy"
    c = case({"s": h.entry(7, [2], 0, 0, len(blob), 0)}, blob)
    refused(worker, c, "tensor", "s", error=CORRUPT, names=(DATA, "'s'", "lengths say"))


def test_variant_record_claiming_a_huge_length(worker):
    blob = h.varint(2**60) + b"abc" + bytes(4)
    c = case({"v": h.entry(21, [1], 0, 0, len(blob), 0)}, blob)
    refused(worker, c, "variant", "v", error=CORRUPT, names=(DATA, "'v'", "truncated"))


def test_variant_elements_beyond_its_bytes(worker):
    c = case({"v": h.entry(21, [1000], 0, 0, 20, 0)}, bytes(20))
    refused(worker, c, "variant", "v", error=CORRUPT, names=(DATA, "'v'", "needs at least 5000"))


# -- slices ----------------------------------------------------------------------------------------


def _partitioned(slices, full=(4,), data_for=None) -> h.Case:
    pieces, data = [], b""
    for extents in slices:
        shape = tuple(d if n == -1 else n for (_, n), d in zip(extents, full))
        count = int(np.prod(shape)) if all(d >= 0 for d in shape) else 0
        blob = np.zeros(count, np.float32).tobytes()
        pieces.append((extents, h.entry(1, shape if all(d >= 0 for d in shape) else (0,), 0, len(data), len(blob), 0)))
        data += blob
    return case(h.slice_entries("t", 1, full, pieces), data)


def test_slices_overlapping(worker):
    refused(worker, _partitioned([((0, 3),), ((2, 2),)]), "restore", error=CORRUPT, names=("'t'", "overlapping"))


def test_two_dimensional_slices_overlapping_in_a_corner(worker):
    c = _partitioned([((0, 2), (0, 2)), ((1, 3), (1, 3)), ((2, 2), (-1 + 1, 1))], full=(4, 4))
    refused(worker, c, "region", "t", (slice(0, 1),), error=CORRUPT, names=("'t'", "overlapping"))


@pytest.mark.parametrize(
    "slices",
    [[((0, 2),), ((2, 4),)], [((-1, 2),), ((1, 3),)], [((0, -2),)], [((1, -1),)], [((0, 2), (0, 1))]],
    ids=["past-the-shape", "negative-start", "negative-length", "full-extent-not-from-0", "rank"],
)
def test_slices_out_of_range(worker, slices):
    refused(worker, _partitioned(slices), "restore", error=CORRUPT, names=("'t'",))


def test_slice_count_huge(worker):
    """20,000 slices of one tensor: checked in O(n log n) (TF's pairwise check took > 90 s here),
    a region read, and one overlap among them found."""
    n = 20_000
    data = np.arange(n, dtype=np.float32).tobytes()
    pieces = [
        (((i, 1),), h.entry(1, (1,), 0, 4 * i, 4, crc.mask(crc.value(data[4 * i : 4 * i + 4])))) for i in range(n)
    ]
    c = case(h.slice_entries("t", 1, (n,), pieces), data)
    out = worker.op(c, "region", "t", (slice(7, 9),))
    assert out.error is None and out.cpu_s < 1.0, out
    pieces[-1] = (((n - 2, 2),), h.entry(1, (2,), 0, 0, 8, 0))
    refused(worker, case(h.slice_entries("t", 1, (n,), pieces), data), "region", "t", (slice(0, 1),), error=CORRUPT,
            names=("'t'", "overlapping"))  # fmt: skip


def test_slice_entry_missing_or_of_another_dtype(worker):
    pieces = [(((0, 2),), h.entry(1, (2,), 0, 0, 8, 0)), (((2, 2),), h.entry(2, (2,), 0, 8, 16, 0))]
    ents = h.slice_entries("t", 1, (4,), pieces)
    refused(worker, case(ents, bytes(24)), "restore", error=CORRUPT, names=("'t'", "dtype"))
    del ents[slice_key("t", ((2, 2),))]
    refused(worker, case(ents, bytes(24)), "restore", error=CORRUPT, names=("'t'", "missing"))


# -- TF, the oracle ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _write(tmp_path, c: h.Case) -> str:
    prefix = str(tmp_path / "c")
    with open(prefix + ".index", "wb") as f:
        f.write(c.index)
    for suffix, blob in c.data:
        with open(prefix + suffix, "wb") as f:
            f.write(blob)
    return prefix


def test_repeated_key_resolves_to_the_first_entry_as_in_tf(tf, tmp_path, worker):
    import distrestore as dr

    d1, c1 = f32(2)
    d2 = np.arange(10, 13, dtype=np.float32).tobytes()
    items = [(b"", h.header(1)), (b"t", h.entry(1, [2], 0, 0, 8, c1))]
    items.append((b"t", h.entry(1, [3], 0, 8, 12, crc.mask(crc.value(d2)))))
    c = h.Case(h.table(items), ((h.data_name(0, 1), d1 + d2),))
    prefix = _write(tmp_path, c)
    want = tf.train.load_checkpoint(prefix).get_tensor("t")
    np.testing.assert_array_equal(dr.load_checkpoint(prefix).get_tensor("t"), want)
    np.testing.assert_array_equal(dr.restore_tensors(prefix)["t"], want)
    assert dr.list_variables(prefix) == [("t", [2])]  # TF's shape map shows the last entry's [3]
    assert worker.op(c, "open").agreed


def test_slice_past_the_full_shape_refused_as_in_tf(tf, tmp_path, worker):
    c = _partitioned([((0, 2),), ((2, 4),)])
    prefix = _write(tmp_path, c)
    with pytest.raises(tf.errors.InternalError, match="out of bounds"):
        tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["t"], shape_and_slices=[""], dtypes=[tf.float32])
    refused(worker, c, "tensor", "t", error=CORRUPT, names=("'t'", "out of bounds"))


@pytest.mark.parametrize("shape", [[-2], [2**32, 2**32]], ids=["negative", "wrapping"])
def test_invalid_shapes_refused_as_in_tf(tf, tmp_path, worker, shape):
    c = case({"t": h.entry(1, shape, 0, 0, 8, 0), "u": h.entry(1, [2], 0, 0, 8, f32(2)[1])}, f32(2)[0])
    prefix = _write(tmp_path, c)
    with pytest.raises(tf.errors.DataLossError, match="Invalid tensor shape"):
        tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["t"], shape_and_slices=[""], dtypes=[tf.float32])
    tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["u"], shape_and_slices=[""], dtypes=[tf.float32])
    refused(worker, c, "tensor", "t", error=CORRUPT, names=("'t'", "invalid tensor shape"))
    assert worker.op(c, "tensor", "u").error is None


def test_entry_past_the_end_of_its_file_as_in_tf(tf, tmp_path, worker):
    c = case({"t": h.entry(1, [2], 0, 100, 8, 0)}, bytes(8))
    prefix = _write(tmp_path, c)
    with pytest.raises(tf.errors.OutOfRangeError):
        tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["t"], shape_and_slices=[""], dtypes=[tf.float32])
    out = refused(worker, c, "tensor", "t", error=STORAGE, names=(DATA,))
    assert "builtins.OSError" in out.mro  # a StorageError is an OSError, as for a truncated file
