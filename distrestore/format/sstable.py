"""LevelDB-style sorted tables (TF's ``.index`` files): parse and build, checksums verified.

Layout: data blocks, an empty metaindex block, the index block, a 48-byte footer. Each block is
followed by a 5-byte trailer (compression type, masked CRC32C of block + type byte).
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
        try:
            import cramjam
        except ImportError:
            raise UnsupportedCheckpointError(
                f"{path}: the index uses Snappy-compressed blocks; install cramjam (pip install cramjam) to read it"
            ) from None
        return bytes(cramjam.snappy.decompress_raw(bytes(block)))
    raise CorruptCheckpointError(f"{path}: bad block type {kind} at byte {end}")


def iter_block(block: bytes, path: str):
    """Yield (key, value) for every entry of one decoded block (restart array ignored)."""
    limit = entries_limit(block, path)
    pos = 0
    key = b""
    try:
        while pos < limit:
            shared, non_shared, vlen = block[pos], block[pos + 1], block[pos + 2]
            if (shared | non_shared | vlen) < 0x80:  # all three varints one byte: the common case
                pos += 3
            else:
                shared, pos = read_varint(block, pos)
                non_shared, pos = read_varint(block, pos)
                vlen, pos = read_varint(block, pos)
            kend = pos + non_shared
            key = key[:shared] + block[pos:kend]
            vend = kend + vlen
            if vend > limit:
                raise CorruptCheckpointError(f"{path}: block entry runs past the block end")
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
    _, _, pos = _decode_handle(data, footer)  # metaindex: always empty in TF
    ioff, isize, _ = _decode_handle(data, pos)
    index = _block(data, ioff, isize, path)
    for _, handle in iter_block(index, path):
        off, size, _ = _decode_handle(handle, 0)
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
