"""Seeded generators of hostile checkpoints at three levels. ``generate(level, seed)`` is a pure
function of its arguments, so a failing case is reproduced from its (level, seed) alone.

- ``raw``: a valid checkpoint's index bytes mutated (bit flips, interesting bytes, cuts,
  insertions, copies of ranges, random tails); its data files sometimes too.
- ``block``: tables whose every checksum is valid around hostile structure: block entries that
  share more than the previous key, lie about lengths, use 10- and 11-byte varints; bad restart
  counts; index handles repeated, overlapping, out of order, past the end or into the footer;
  Snappy blocks that are garbage or claim huge sizes; keys that expand by prefix sharing;
  repeated and unordered keys, missing or repeated headers; footers pointing anywhere.
- ``entry``: well-formed tables of hostile ``BundleEntryProto``/``BundleHeaderProto``: dtypes
  unknown or variable-width, shapes negative, huge, wrapping or of rank > 64, shard ids, offsets
  and sizes at and past every boundary, slices out of range, overlapping or missing, odd field
  encodings; with data files that sometimes match the entries exactly, so reads go deep.
"""

from __future__ import annotations

import random
import struct

from distrestore.format import crc, sstable
from distrestore.format.slices import slice_key
from distrestore.format.wire import FIXED32, LENGTH, VARINT, field

from .hostile import (
    Case,
    assemble,
    block_of,
    data_name,
    entry,
    header,
    raw_block,
    snappy,
    string_tensor,
    table,
    tensor_table,
    varint,
)

LEVELS = ("raw", "block", "entry")

FIXED = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 14: 2, 17: 2, 19: 2, 22: 4, 23: 8, 24: 1, 29: 1}
BIG_INTS = [2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, 10**15]


def generate(level: str, seed: int) -> Case:
    rng = random.Random(f"{level}:{seed}")
    case = {"raw": _raw, "block": _block, "entry": _entry}[level](rng)
    return case._replace(label=f"{level}:{seed}:{case.label}")


# -- valid checkpoints (the raw level's starting points, the other levels' values) ----------------


def _variant_blob(records: list[bytes]) -> tuple[bytes, int]:
    out, running = bytearray(), 0
    for r in records:
        running = crc.value(struct.pack("<Q", len(r)) + r, running)
        elem = struct.pack("<I", crc.mask(running))
        running = crc.value(elem, running)
        out += varint(len(r)) + r + elem
    return bytes(out), crc.mask(running)


def _value(rng: random.Random, dtype: int, shape) -> tuple[bytes, int]:
    n = 1
    for d in shape:
        n *= d
    if dtype == 7:
        return string_tensor([rng.randbytes(rng.choice([0, 1, 5, 200])) for _ in range(n)])
    if dtype == 21:
        return _variant_blob([rng.randbytes(rng.choice([0, 3, 40])) for _ in range(n)])
    blob = rng.randbytes(n * FIXED[dtype])
    return blob, crc.mask(crc.value(blob))


def valid_checkpoint(rng: random.Random) -> tuple[dict, int, dict[int, bytes]]:
    """(entries name -> entry bytes, num_shards, data per shard) of a checkpoint that reads."""
    num_shards = rng.choice([1, 1, 2, 3])
    data = {i: bytearray() for i in range(num_shards)}
    entries: dict = {}
    for t in range(rng.randint(1, 12)):
        dtype = rng.choice([1, 1, 2, 3, 7, 9, 14, 29, 21, 7, 10])
        shape = tuple(rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randint(0, 3)))
        name = rng.choice(["w", "layer/kernel", "opt/m", "ü/名", "a" * 40]) + f"/{t}"
        shard = rng.randrange(num_shards)
        if dtype not in (7, 21) and len(shape) >= 1 and shape[0] >= 2 and rng.random() < 0.3:
            # partitioned along dimension 0, slices in any shard
            cut = rng.randint(1, shape[0] - 1)
            pieces = []
            for start, length in ((0, cut), (cut, shape[0] - cut)):
                extents = ((start, length),) + ((0, -1),) * (len(shape) - 1)
                piece_shape = (length, *shape[1:])
                blob, c = _value(rng, dtype, piece_shape)
                s = rng.randrange(num_shards)
                pieces.append((extents, entry(dtype, piece_shape, s, len(data[s]), len(blob), c)))
                data[s] += blob
            entries[name] = entry(dtype, shape, slices=[e for e, _ in pieces])
            for extents, value in pieces:
                entries[slice_key(name, extents)] = value
            continue
        blob, c = _value(rng, dtype, shape)
        entries[name] = entry(dtype, shape, shard, len(data[shard]), len(blob), c)
        data[shard] += blob
    return entries, num_shards, {i: bytes(b) for i, b in data.items()}


def _files(num_shards: int, data: dict[int, bytes]) -> tuple[tuple[str, bytes], ...]:
    return tuple((data_name(i, num_shards), b) for i, b in sorted(data.items()))


def _valid_index(rng, entries, num_shards) -> bytes:
    raw = tensor_table(entries, num_shards, block_size=rng.choice([64, 256, 4096, sstable.BLOCK_SIZE]))
    if rng.random() < 0.15:  # the same table with Snappy data blocks
        items = [(b"", header(num_shards))] + sorted(
            (k if isinstance(k, bytes) else k.encode("utf-8", "surrogateescape"), v) for k, v in entries.items()
        )
        raw = assemble([(snappy(block_of(items)), sstable.SNAPPY)])
    return raw


# -- raw -------------------------------------------------------------------------------------------


INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x08, 0x12, 0x3A]


def _mutate(rng: random.Random, raw: bytes, rounds: int) -> bytes:
    b = bytearray(raw)
    for _ in range(rounds):
        if not b:
            b += rng.randbytes(rng.randint(1, 64))
            continue
        op = rng.randrange(8)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice(INTERESTING)
        elif op == 2:
            del b[rng.randrange(len(b)) :]
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            del b[i : i + rng.randint(1, 16)]
        elif op == 5:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 64)]
        elif op == 6:
            b[i : i + 8] = struct.pack("<Q", rng.choice(BIG_INTS) & (2**64 - 1))
        else:
            b += rng.randbytes(rng.randint(1, 64))
    return bytes(b)


def _raw(rng: random.Random) -> Case:
    entries, n, data = valid_checkpoint(rng)
    raw = _valid_index(rng, entries, n)
    if rng.random() < 0.05:
        return Case(rng.randbytes(rng.choice([0, 10, 47, 48, 49, 200, 4000])), _files(n, data), "random bytes")
    raw = _mutate(rng, raw, rng.choice([1, 1, 1, 2, 3, 8]))
    if rng.random() < 0.2:
        data = {i: _mutate(rng, d, 1) for i, d in data.items()}
    return Case(raw, _files(n, data), "mutated")


# -- block -----------------------------------------------------------------------------------------


def _items(rng):
    entries, n, data = valid_checkpoint(rng)
    items = [(b"", header(n))] + sorted(
        (k if isinstance(k, bytes) else k.encode("utf-8", "surrogateescape"), v) for k, v in entries.items()
    )
    return items, n, data


def _odd_varint(rng, value: int) -> bytes:
    """``value`` as a varint, sometimes non-minimal (padded with 0x80 bytes) or overlong."""
    r = rng.random()
    if r < 0.6:
        return varint(value)
    if r < 0.8:  # padded: still the same value, up to 10 bytes or past them
        body = bytearray(varint(value))
        for _ in range(rng.randint(1, 6)):
            body[-1] |= 0x80
            body.append(0)
        return bytes(body)
    return varint(rng.choice(BIG_INTS))


def _hostile_entries(rng, items) -> bytes:
    """Block entries (raw bytes) whose framing lies now and then."""
    out = bytearray()
    last = b""
    for k, v in items:
        shared = 0
        while shared < min(len(k), len(last)) and k[shared] == last[shared]:
            shared += 1
        suffix = k[shared:]
        kind = rng.random()
        if kind < 0.08:
            shared += rng.randint(1, 40)  # more than the previous key holds
        elif kind < 0.12:
            shared = rng.choice(BIG_INTS)
        fields = [shared, len(suffix), len(v)]
        if rng.random() < 0.1:
            fields[rng.randrange(3)] = rng.choice([0, 1, 127, 128, 255, 4096, *BIG_INTS])
        out += b"".join(_odd_varint(rng, f) for f in fields) + suffix + v
        last = k
    return bytes(out)


def _block(rng: random.Random) -> Case:
    items, n, data = _items(rng)
    files = _files(n, data)
    kind = rng.randrange(10)
    if kind == 0:  # hostile entry framing inside otherwise valid blocks
        body = _hostile_entries(rng, items)
        restarts = rng.choice([(0,), (0, 0), tuple(range(0, len(body), 7))[:50], (2**32 - 1,)])
        return Case(assemble([raw_block(body, restarts)]), files, "entry framing")
    if kind == 1:  # restart arrays that do not fit
        good = block_of(items)
        count = rng.choice([0, 1, 2**30, 2**32 - 1, len(good) // 4, len(good) // 4 + 1])
        bad = good[:-4] + struct.pack("<I", count)
        return Case(assemble([bad if rng.random() < 0.8 else good[: rng.randrange(len(good))]]), files, "restarts")
    if kind == 2:  # index handles: repeated, overlapping, out of order, past the end, into the footer
        blocks = [block_of(items[i::2]) for i in range(2)]
        total = sum(len(b) + 5 for b in blocks)
        real = [(0, len(blocks[0])), (len(blocks[0]) + 5, len(blocks[1]))]
        choice = rng.randrange(7)
        if choice == 0:
            handles = [real[0]] * rng.choice([2, 3, 100, 2000])
        elif choice == 1:
            handles = [real[1], real[0]]
        elif choice == 2:
            handles = [real[0], (real[0][0] + 1, real[0][1])]
        elif choice == 3:
            handles = [(rng.choice([total, total + 40, 2**40, 2**63]), rng.choice([0, 10, 2**62]))]
        elif choice == 4:
            handles = [(real[0][0], real[0][1] + rng.choice([1, 5, 60, 10**6]))]
        elif choice == 5:
            handles = [rng.choice([b"", b"\x80", b"\xff" * 11, varint(2**64 - 1) + varint(5), rng.randbytes(7)])]
        else:
            handles = [(rng.randrange(total + 100), rng.randrange(total + 100)) for _ in range(rng.randint(1, 5))]
        return Case(assemble(blocks, handles), files, f"handles {choice}")
    if kind == 3:  # Snappy: valid, a bomb, or garbage, or an unknown block type
        raw = block_of(items)
        choice = rng.randrange(5)
        if choice == 0:
            comp = snappy(raw)
        elif choice == 1:  # a stream claiming far more than its bytes can expand to
            comp = varint(rng.choice([2**20, 2**31, 2**32 - 1])) + snappy(raw)[len(varint(len(raw))) :]
        elif choice == 2:
            comp = rng.randbytes(rng.randint(0, 64))
        elif choice == 3:  # the preamble right, the body cut
            comp = snappy(raw)[: rng.randint(1, 20)]
        else:
            return Case(assemble([(raw, rng.choice([2, 3, 0x80, 0xFF]))]), files, "block type")
        return Case(assemble([(comp, sstable.SNAPPY)]), files, f"snappy {choice}")
    if kind == 4:  # keys expanded by prefix sharing
        long = rng.choice([100, 1000, 20_000])
        first = b"t" * long
        ents = [(0, first, items[1][1] if len(items) > 1 else b"")]
        for i in range(rng.choice([10, 100, 2000])):
            ents.append((long, b"%02d" % (i % 100), b""))  # each key: the long one plus 2 bytes
        hdr = [(0, b"", header(n))]
        return Case(assemble([raw_block(hdr + ents)]), files, "prefix expansion")
    if kind == 5:  # repeated or unordered keys, missing or repeated header
        items2 = list(items)
        choice = rng.randrange(4)
        if choice == 0 and len(items2) > 1:
            i = rng.randrange(1, len(items2))
            items2.insert(i, (items2[i][0], rng.choice([items2[-1][1], rng.randbytes(8)])))
        elif choice == 1:
            rng.shuffle(items2)
        elif choice == 2:
            items2 = items2[1:]
        else:
            items2.insert(rng.randrange(len(items2) + 1), (b"", header(rng.choice([0, 2, 5]))))
        return Case(table(items2, rng.choice([64, 256, 4096])), files, f"keys {choice}")
    if kind == 6:  # footers pointing anywhere (the magic intact)
        raw = bytearray(table(items))
        footer = len(raw) - 48
        raw[footer : footer + 40] = (
            _odd_varint(rng, rng.randrange(len(raw) + 10)) * rng.randint(1, 4) + rng.randbytes(rng.randint(0, 30))
        ).ljust(40, b"\x00")[:40]
        return Case(bytes(raw), files, "footer")
    if kind == 7:  # many tiny blocks, or one block listed with junk between
        blocks = [block_of([kv]) for kv in items]
        return Case(assemble(blocks), files, "many blocks")
    if kind == 8:  # random block bodies with valid checksums
        blocks = [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(1, 3))]
        return Case(assemble(blocks), files, "random blocks")
    # a valid table whose values are random bytes
    items2 = [(k, v if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 40))) for k, v in items]
    return Case(table(items2), files, "random values")


# -- entry -----------------------------------------------------------------------------------------


DIMS = [0, 1, 2, 3, 7, -1, -2, -(2**63), 2**31, 2**32, 2**62, 2**63 - 1, 10**15, 255]


def _shape(rng: random.Random):
    r = rng.random()
    if r < 0.5:
        return tuple(rng.choice([0, 1, 2, 3, 4]) for _ in range(rng.randint(0, 3)))
    if r < 0.95:
        return tuple(rng.choice(DIMS) for _ in range(rng.randint(0, 4)))
    return (1,) * rng.choice([64, 65, 70, 300])


def _location(rng, file_len: int) -> int:
    if rng.random() < 0.7:
        return rng.choice([0, 1, file_len, max(0, file_len - 1), file_len + 1, rng.randrange(file_len + 1)])
    return rng.choice(BIG_INTS)


def _extra(rng: random.Random) -> bytes:
    """Unusual encodings after an entry: repeated or unknown fields, other wire types, truncation."""
    choice = rng.randrange(9)
    if choice == 0:
        return field(rng.randint(8, 99), VARINT, rng.choice([0, 1, 2**63]))
    if choice == 1:
        return field(rng.choice([1, 3, 4, 5]), VARINT, rng.choice([0, 1, 7, 21, 2**31, 2**63 - 1, 2**64 - 1]))
    if choice == 2:
        return field(rng.randint(1, 9), LENGTH, rng.randbytes(rng.randint(0, 9)))
    if choice == 3:
        return field(6, FIXED32, rng.getrandbits(32))
    if choice == 4:
        return bytes([rng.randint(0, 255)])  # a stray tag
    if choice == 5:
        return b"\x20" + b"\xff" * rng.choice([9, 10, 11]) + b"\x01"  # an overlong offset varint
    if choice == 6:
        return b"\x12" + varint(rng.choice([1, 5, 2**31]))  # a shape that runs past the end
    if choice == 7:
        return bytes([(rng.randint(1, 9) << 3) | rng.choice([3, 4, 6, 7])])  # group/unknown wire types
    return b""


def _entry(rng: random.Random) -> Case:
    entries, n, data = valid_checkpoint(rng)
    for shard in list(data):
        if rng.random() < 0.15:  # a data file that is shorter, longer or missing
            choice = rng.randrange(3)
            if choice == 0:
                data[shard] = data[shard][: rng.randrange(len(data[shard]) + 1)]
            elif choice == 1:
                data[shard] += rng.randbytes(rng.randint(1, 64))
            else:
                del data[shard]
    file_len = max((len(d) for d in data.values()), default=0)
    names = list(entries)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(10)
        name = rng.choice(names) if names and rng.random() < 0.6 else rng.choice(["h", "\udcff", "zz/ü", "a" * 300])
        if isinstance(name, bytes):  # a hidden slice entry's key
            name = name.decode("utf-8", "surrogateescape")
        if kind <= 3:  # one hostile field in an entry of otherwise sensible values
            dtype = rng.choice([1, 2, 3, 7, 9, 14, 21, 29, 1, 7, 21, 0, 20, 34, 999, 2**40])
            shape = _shape(rng)
            shard = rng.choice([0, 0, 0, 1, n - 1, n, 2**31, 2**63 - 1, 2**64 - 1])
            offset, size = _location(rng, file_len), _location(rng, file_len)
            extra = _extra(rng) if rng.random() < 0.3 else b""
            entries[name] = entry(dtype, shape, shard, offset, size, rng.getrandbits(32), extra=extra)
        elif kind == 4:  # a consistent entry of a huge shape (the size agrees with it)
            dtype = rng.choice([1, 7, 21, 9])
            shape = tuple(rng.choice([10**15, 2**40, 2**31, 3]) for _ in range(rng.randint(1, 3)))
            count = 1
            for d in shape:
                count *= d
            size = count * FIXED.get(dtype, 1) if dtype not in (7, 21) else rng.choice([2**63 - 1, 2**40, 10])
            entries[name] = entry(dtype, shape, 0, rng.choice([0, 4]), size, 0)
        elif kind == 5:  # slices: out of range, overlapping, negative, missing or many
            shape = tuple(rng.choice([0, 2, 4, 6, 2**40]) for _ in range(rng.randint(1, 3)))
            slices = []
            for _ in range(rng.choice([1, 2, 3, 6, 200])):
                slices.append(
                    tuple(
                        (rng.choice([0, 1, 2, 3, 5, -1, 2**62]), rng.choice([-1, 0, 1, 2, 3, 4, -2, 2**62]))
                        for _ in range(len(shape) + (rng.random() < 0.05))
                    )
                )
            entries[name] = entry(1, shape, slices=slices, extra=_extra(rng) if rng.random() < 0.2 else b"")
            for extents in slices[: rng.choice([0, 1, len(slices)])]:
                piece = tuple(d if ln == -1 else ln for (_, ln), d in zip(extents, shape))
                if any(d < 0 for d in piece):
                    piece = (2,)
                count = 1
                for d in piece:
                    count *= d
                try:
                    key = slice_key(name, extents)
                except (OverflowError, ValueError):
                    continue
                entries[key] = entry(rng.choice([1, 1, 2]), piece, 0, 0, count * 4, 0, extra=_extra(rng))
        elif kind == 6:  # a hidden (slice) entry nobody refers to, or one of a broken key
            key = b"\x00" + rng.randbytes(rng.randint(0, 12))
            entries[key] = entry(1, (2,), 0, 0, 8, 0) if rng.random() < 0.7 else rng.randbytes(6)
        elif kind == 7:  # a string or variant whose element count outgrows its bytes
            dtype = rng.choice([7, 21])
            count = rng.choice([3, 1000, 10**6, 2**40])
            size = rng.choice([0, 4, 7, count, count + 3, file_len])
            entries[name] = entry(dtype, (count,), 0, 0, size, rng.getrandbits(32))
        elif kind == 8:  # a valid entry's bytes with a field appended or the whole thing cut
            if names:
                v = entries[rng.choice(names)]
                entries[name] = v[: rng.randrange(len(v) + 1)] if rng.random() < 0.5 else v + _extra(rng)
        else:  # an entry of a sensible location reading real bytes whose checksum is wrong
            if file_len >= 8:
                entries[name] = entry(1, (2,), 0, rng.randrange(file_len - 7), 8, rng.getrandbits(32))
    num_shards = n
    hdr = None
    r = rng.random()
    if r < 0.15:
        num_shards = rng.choice([0, 2, 5, 10**7, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**64 - 1])
        hdr = header(num_shards)
    elif r < 0.2:
        hdr = header(n, rng.choice([1, 2, 2**40]), rng.choice([-1, 0, 1, 2**40]), rng.choice([0, 1, 2, -5]))
    elif r < 0.23:
        hdr = rng.randbytes(rng.randint(0, 12))
    raw = tensor_table(entries, n, hdr, block_size=rng.choice([128, 4096, sstable.BLOCK_SIZE]))
    return Case(raw, _files(n, data), "entries")
