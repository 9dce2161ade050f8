"""LevelDB-style sorted tables (TF's ``.index`` files): parse and build, checksums verified.

Layout: data blocks, an empty metaindex block, the index block, a 48-byte footer. Each block is
followed by a 5-byte trailer (compression type, masked CRC32C of block + type byte).

Reading trusts nothing: the index block lies inside the file before the footer; the data blocks
it lists come before it, in increasing order and without overlap (so each is read once); a Snappy
block may claim no more than Snappy can expand its bytes to; keys may share no more than the
previous key holds, and a block's keys add up to at most ``KEY_EXPANSION`` times its size.
"""

from __future__ import annotations

import struct

from ..errors import CorruptCheckpointError, UnsupportedCheckpointError
from . import crc
from .wire import encode_varint, read_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48
TRAILER_LEN = 5
BLOCK_SIZE = 262144  # TF's target block size (table_options.h)
NO_COMPRESSION, SNAPPY = 0, 1
# TF writes a full key every 16 entries (its restart interval), so its blocks' keys add up to less
# than 16 x the block; 32 leaves room and still bounds what prefix sharing can expand a block to
KEY_EXPANSION = 32
# a Snappy copy element of 3 bytes yields at most 64: no stream expands more than 64/3-fold
SNAPPY_MAX_RATIO = 64 / 3


def _decode_handle(buf, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def _block(data, offset: int, size: int, path: str) -> bytes:
    end = offset + size
    if end + TRAILER_LEN > len(data):
        raise CorruptCheckpointError(
            f"{path}: block at bytes [{offset}, {end + TRAILER_LEN}) runs past the end of the "
            f"file ({len(data)} bytes); the file is truncated"
        )
    kind = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    # memoryview slices: a checksum over the block needs no copy
    if crc.value(memoryview(data)[offset : end + 1]) != crc.unmask(stored):
        raise CorruptCheckpointError(f"{path}: block checksum mismatch in bytes [{offset}, {end})")
    block = data[offset:end]
    if kind == NO_COMPRESSION:
        return block
    if kind == SNAPPY:
        return _unsnappy(bytes(block), offset, path)
    raise CorruptCheckpointError(f"{path}: bad block type {kind} at byte {end}")


def _unsnappy(block: bytes, offset: int, path: str) -> bytes:
    try:
        import cramjam
    except ImportError:
        raise UnsupportedCheckpointError(
            f"{path}: the index uses Snappy-compressed blocks; install cramjam (pip install cramjam) to read it"
        ) from None
    where = f"{path}: Snappy block at byte {offset}"
    try:
        claimed, _ = read_varint(block, 0)  # the stream's preamble: its uncompressed length
    except (IndexError, CorruptCheckpointError):
        raise CorruptCheckpointError(f"{where} has no valid length preamble") from None
    if claimed > len(block) * SNAPPY_MAX_RATIO:
        raise CorruptCheckpointError(
            f"{where} claims {claimed} bytes; {len(block)} compressed bytes expand to at most "
            f"{int(len(block) * SNAPPY_MAX_RATIO)}"
        )
    try:
        out = bytes(cramjam.snappy.decompress_raw(block))
    except Exception as e:  # cramjam.DecompressionError and whatever else a broken stream raises
        raise CorruptCheckpointError(f"{where} does not decompress: {e}") from None
    if len(out) != claimed:
        raise CorruptCheckpointError(f"{where} decompressed to {len(out)} bytes, its preamble says {claimed}")
    return out


def iter_block(block: bytes, path: str):
    """Yield (key, value) for every entry of one decoded block (restart array ignored)."""
    limit = entries_limit(block, path)
    pos = 0
    key = b""
    budget = KEY_EXPANSION * len(block)  # key bytes this block may decode to
    try:
        while pos < limit:
            shared, non_shared, vlen = block[pos], block[pos + 1], block[pos + 2]
            if (shared | non_shared | vlen) < 0x80:  # all three varints one byte: the common case
                pos += 3
            else:
                shared, pos = read_varint(block, pos)
                non_shared, pos = read_varint(block, pos)
                vlen, pos = read_varint(block, pos)
            if shared > len(key):
                raise CorruptCheckpointError(f"{path}: a block entry shares more of the previous key than it has")
            kend = pos + non_shared
            vend = kend + vlen
            if vend > limit:
                raise CorruptCheckpointError(f"{path}: block entry runs past the block end")
            budget -= shared + non_shared
            if budget < 0:
                raise CorruptCheckpointError(f"{path}: the keys of a block add up to more than 32 times its size")
            key = key[:shared] + block[pos:kend]
            yield key, block[kend:vend]
            pos = vend
    except IndexError:
        raise CorruptCheckpointError(f"{path}: truncated block entry") from None


def read_blocks(data: bytes, path: str):
    """Yield every decoded data block of a table in key order, checksums verified."""
    if len(data) < FOOTER_LEN:
        raise CorruptCheckpointError(f"{path}: file is too short to be an sstable ({len(data)} bytes < {FOOTER_LEN})")
    footer = len(data) - FOOTER_LEN
    lo, hi = struct.unpack_from("<II", data, footer + 40)
    if (hi << 32) | lo != MAGIC:
        raise CorruptCheckpointError(f"{path}: not an sstable (bad magic number)")
    try:
        _, _, pos = _decode_handle(data, footer)  # metaindex: always empty in TF
        ioff, isize, _ = _decode_handle(data, pos)
    except (IndexError, CorruptCheckpointError):
        raise CorruptCheckpointError(f"{path}: bad block handles in the footer") from None
    if ioff + isize + TRAILER_LEN > footer:
        raise CorruptCheckpointError(
            f"{path}: the index block at bytes [{ioff}, {ioff + isize}) does not end before the footer (byte {footer})"
        )
    index = _block(data, ioff, isize, path)
    next_free = 0  # data blocks come in file order, each after the previous one's trailer
    for _, handle in iter_block(index, path):
        try:
            off, size, _ = _decode_handle(handle, 0)
        except (IndexError, CorruptCheckpointError):
            raise CorruptCheckpointError(f"{path}: bad data block handle in the index block") from None
        if off < next_free or off + size + TRAILER_LEN > ioff:
            raise CorruptCheckpointError(
                f"{path}: data block at bytes [{off}, {off + size}) overlaps another block or lies "
                f"outside [{next_free}, {ioff}); the index block lists blocks in file order, once each"
            )
        next_free = off + size + TRAILER_LEN
        yield _block(data, off, size, path)


def entries_limit(block: bytes, path: str) -> int:
    """Where a block's entries end (before the restart array)."""
    if len(block) < 4:
        raise CorruptCheckpointError(f"{path}: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CorruptCheckpointError(f"{path}: bad restart count {num_restarts} in a block")
    return limit


def read_table(data: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table, in key order, every block checksum verified."""
    return [kv for block in read_blocks(data, path) for kv in iter_block(block, path)]


class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.reset()

    def reset(self):
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes):
        shared = 0
        if self.count < self.interval:
            limit = min(len(key), len(self.last))
            while shared < limit and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.count += 1

    def finish(self) -> bytes:
        tail = b"".join(struct.pack("<I", r) for r in self.restarts) + struct.pack("<I", len(self.restarts))
        return bytes(self.buf) + tail

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4


def _short_successor_separator(a: bytes, b: bytes) -> bytes:
    """LevelDB's FindShortestSeparator: a short key k with a <= k < b."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    if i < n and a[i] < 0xFF and a[i] + 1 < b[i]:
        return a[:i] + bytes([a[i] + 1])
    return a


def build_table(items, block_size: int = BLOCK_SIZE) -> bytes:
    """Serialize sorted (key, value) pairs as an uncompressed table, as TF's TableBuilder does."""
    out = bytearray()
    data = _BlockBuilder(16)
    index = _BlockBuilder(1)
    pending_handle = None  # handle of the last finished data block, waiting for the next key
    last_key = b""

    def write_block(contents: bytes) -> bytes:
        off = len(out)
        out.extend(contents)
        trailer_type = bytes([NO_COMPRESSION])
        out.extend(trailer_type + struct.pack("<I", crc.mask(crc.value(contents + trailer_type))))
        return encode_varint(off) + encode_varint(len(contents))

    for key, value in items:
        if pending_handle is not None:
            index.add(_short_successor_separator(last_key, key), pending_handle)
            pending_handle = None
        data.add(key, value)
        last_key = key
        if data.size_estimate() >= block_size:
            pending_handle = write_block(data.finish())
            data.reset()
    if data.count:
        pending_handle = write_block(data.finish())
    if pending_handle is not None:
        index.add(last_key, pending_handle)  # TF uses FindShortSuccessor; the key itself is valid
    meta = _BlockBuilder(16)
    meta_handle = write_block(meta.finish())
    index_handle = write_block(index.finish())
    footer = meta_handle + index_handle
    footer += b"\x00" * (40 - len(footer)) + struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32)
    out.extend(footer)
    return bytes(out)
