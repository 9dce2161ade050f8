"""The C index accelerator and the pure-Python loop decode every index identically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distrestore.format import crc, entry_table, messages, sstable
from distrestore.format.messages import encode_entry, encode_header
from distrestore.format.slices import slice_key
from distrestore.index import CheckpointIndex

pytestmark = pytest.mark.skipif(entry_table.native is None, reason="C accelerator not built")


def both(prefix: str, raw: bytes, monkeypatch) -> tuple[CheckpointIndex, CheckpointIndex]:
    fast = CheckpointIndex.from_bytes(prefix, raw)
    with monkeypatch.context() as m:
        m.setattr(entry_table, "native", None)
        slow = CheckpointIndex.from_bytes(prefix, raw)
    for field, a, b in zip(fast.columns()._fields, fast.columns(), slow.columns()):
        assert np.array_equal(np.asarray(a, object), np.asarray(b, object)), field
    return fast, slow


def test_fixtures_decode_identically(fixtures_dir, monkeypatch):
    checked = 0
    for exp in sorted(fixtures_dir.glob("*/expected.json")):
        prefix = exp.parent / json.loads(exp.read_text())["prefix"]
        index_file = prefix.with_name(prefix.name + ".index")
        if not index_file.exists():
            continue
        fast, slow = both(str(prefix), index_file.read_bytes(), monkeypatch)
        assert fast.entries == slow.entries and fast.raw_slice_entries() == slow.raw_slice_entries()
        assert fast.header == slow.header
        checked += 1
    assert checked >= 8


def test_unusual_entries_decode_identically(monkeypatch):
    items = {b"": encode_header(3)}
    for i in range(3000):  # several blocks, varints of every width, long shared prefixes
        name = f"scope_{i % 7}/{'x' * (i % 200)}/ü{i}".encode()
        items[name] = encode_entry(
            1 + i % 20 if 1 + i % 20 not in (7, 20, 21) else 1,
            (i % 5, 300 + i) if i % 3 else (),
            i % 3,
            i * 70_000_001,
            i * 129,
            crc.mask(i),
        )
    items[b"part"] = encode_entry(1, (10, 3), slices=[((0, 4), (0, -1)), ((4, 6), (0, -1))])
    items[slice_key("part", ((0, 4), (0, -1)))] = encode_entry(1, (4, 3), 1, 0, 48, 5)
    items[slice_key("part", ((4, 6), (0, -1)))] = encode_entry(1, (6, 3), 1, 48, 72, 6)
    items[b"unknown_field"] = encode_entry(1, (2,), 0, 0, 8, 1) + b"\x40\x05"  # field 8, varint
    raw = sstable.build_table(sorted(items.items()), block_size=4096)
    fast, slow = both("mem/x", raw, monkeypatch)
    assert len(fast.entries) == 3002
    assert fast.entries == slow.entries and fast.raw_slice_entries() == slow.raw_slice_entries()
    assert fast.entries["part"].slices == (((0, 4), (0, -1)), ((4, 6), (0, -1)))
    assert type(fast.entries["unknown_field"]) is messages.TensorEntry


def test_corrupt_block_framing_is_a_named_error():
    items = sorted({b"": encode_header(1), b"a": encode_entry(1, (1,), 0, 0, 4, 0)}.items())
    block = sstable._BlockBuilder(16)
    for k, v in items:
        block.add(k, v)
    raw = bytearray(block.finish())
    raw[2] = 0x7F  # the header entry claims a 127-byte value
    with pytest.raises(ValueError, match="mem/y.index"):
        entry_table.decode_table([bytes(raw)], "mem/y.index")


def test_batched_crc_check_finds_the_first_bad_piece(monkeypatch):
    """The C check (three pieces at a time) and the pure-Python loop agree, whatever the sizes."""
    rng = np.random.default_rng(7)
    for _ in range(100):
        n = int(rng.integers(0, 20))
        sizes = rng.integers(0, 2500, n).astype(np.int64)
        offsets = (np.cumsum(sizes) - sizes + rng.integers(0, 3, n)).astype(np.int64)
        buf = rng.integers(0, 256, int((offsets + sizes).max()) if n else 0, dtype=np.uint8)
        masked = np.array([crc.mask(crc.value(buf[o : o + s])) for o, s in zip(offsets, sizes)], np.uint32)
        bad = masked.copy()
        for k in sorted(rng.choice(n, size=min(n, 2), replace=False)) if n else []:
            bad[k] ^= 1 << int(rng.integers(0, 32))
        for m in (masked, bad):
            want = next((i for i in range(n) if m[i] != masked[i]), -1)
            assert crc.first_mismatch(buf, offsets, sizes, m) == want
            with monkeypatch.context() as p:
                p.setattr(crc, "native", None)
                assert crc.first_mismatch(buf, offsets, sizes, m) == want


@pytest.mark.parametrize("accelerated", [True, False], ids=["C", "python"])
def test_location_past_2_63_is_a_corrupt_index(monkeypatch, accelerated):
    from distrestore.errors import CorruptCheckpointError

    if not accelerated:
        monkeypatch.setattr(entry_table, "native", None)
    items = {
        b"": encode_header(1),
        b"a": encode_entry(1, (2,), 0, 2**63 + 5, 8, 1),
        b"b": encode_entry(1, (2,), slices=[((0, 2),)]),
    }
    raw = sstable.build_table(sorted(items.items()))
    with pytest.raises(CorruptCheckpointError, match="mem/o.index.*out of range"):
        CheckpointIndex.from_bytes("mem/o", raw)
