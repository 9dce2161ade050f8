"""Helpers for the verified-region tests: corrupting one byte in place, and finding the stored
entries a region touches and the bytes worth corrupting in them."""

from __future__ import annotations

import numpy as np

from distrestore.format.slices import box_from_region, box_shape, box_size, intersect, relative, to_box


def flip(path: str, pos: int) -> None:
    """Flip the lowest bit of byte ``pos`` of ``path`` in place (again to undo)."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ 0x01]))


def touched(index, name, region):
    """(data file, stored entry, its box) of every stored entry ``region`` of ``name`` touches."""
    entry = index.entry(name)
    want = box_from_region(region, entry.shape)
    if box_size(want) == 0:
        return []
    if not entry.slices:
        return [(index.data_file(entry.shard_id), entry, tuple((0, d) for d in entry.shape))]
    out = []
    for s in entry.slices:
        box = to_box(s, entry.shape)
        if intersect(box, want) is not None:
            stored = index.slice_entry(name, s)
            out.append((index.data_file(stored.shard_id), stored, box))
    return out


def flip_positions(entry, box, wants) -> list[int]:
    """File offsets to corrupt in a stored entry: its first and last byte, a byte the regions
    ``wants`` need, and one they do not need (where there is one)."""
    rel = {0, entry.size - 1}
    if entry.dtype.fixed_width:
        count = box_size(box)
        need = np.zeros(count, bool)
        ids = np.arange(count).reshape(box_shape(box))
        for want in wants:
            part = intersect(box, want)
            if part is not None:
                need[ids[relative(part, box)].ravel()] = True
        inside, outside = np.flatnonzero(need), np.flatnonzero(~need)
        rel.add(int(inside[len(inside) // 2]) * entry.dtype.itemsize)
        if outside.size:
            rel.add(int(outside[len(outside) // 2]) * entry.dtype.itemsize)
    else:
        rel.add(entry.size // 2)
    return sorted(entry.offset + p for p in rel if 0 <= p < entry.size)
