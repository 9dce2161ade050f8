"""SSTable blocks (``distrestore.format.sstable``): round trips, TF-written index bytes, checksums.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import os

import pytest
from format_support import FIXTURES, SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from distrestore.errors import CorruptCheckpointError
from distrestore.format import messages, sstable
from distrestore.format.wire import read_varint


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
