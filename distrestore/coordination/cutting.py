"""Cutting the bytes a coordinator must read into pieces, and choosing the node that reads each.

A *piece* is one read task's range and one object in Ray's object store. Pieces are cut

* at every consumer boundary: where the set of nodes that need the bytes changes, so that a node
  receives its share and not its neighbours' (bytes delivered per node stay at its share);
* into at most ``chunk`` bytes (parallel reads, bounded objects, cheap retries), in equal parts;
* but small neighbouring runs (under ``min_piece`` bytes together) are joined whatever their
  consumers, so that 10^5 interleaved small tensors do not become 10^5 objects; a node then
  receives up to ``min_piece`` bytes of its neighbours' around each of its own small runs;
* never inside an *atom* (a string entry, whose checksum needs it whole).

Consumers are workers (registrations): pieces are cut at each worker's boundaries, so each
receives its own bytes even when several run on one node. A piece whose consumers all run on one
node is read on that node; one that several nodes consume is read by the least loaded of them and
shared through the object store; bytes nobody consumes (read only to
complete an entry's checksum) go to the least loaded node of the batch. All numpy: the runs of
one consumer set come from one pass per node, not one Python step per byte range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .ranges import Ranges, contains, merge, overlapping, unique

NO_NODE = -1


class Pieces(NamedTuple):
    """New reads: ``[start[i], end[i])`` (positions), read on node ``node[i]`` (an index into
    the batch's node list)."""

    start: np.ndarray
    end: np.ndarray
    node: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.start)


def cut(
    todo: Ranges,
    consumers: Sequence[Ranges],
    *,
    chunk: int,
    min_piece: int,
    nodes: Sequence[int] | None = None,
    atoms: Ranges | None = None,
    load: Sequence[int] | None = None,
) -> Pieces:
    """Pieces covering ``todo`` (merged) for consumers whose needed bytes are ``consumers[k]``
    (merged) and who run on node ``nodes[k]`` (default: node k). ``load``: bytes already
    assigned to each node."""
    if chunk <= 0 or min_piece < 0:
        raise ValueError("chunk must be positive and min_piece not negative")
    node_of = np.arange(len(consumers)) if nodes is None else np.asarray(nodes, np.int64)
    if not len(todo):
        return Pieces(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    need = Ranges.concat(consumers)
    # elementary intervals: between any two boundaries, inside todo
    bounds = unique(np.concatenate([todo.start, todo.end, need.start, need.end]))
    # who needs each one: a 64-bit signature of the consumer set (XOR of the consumers' random
    # keys, over each consumer's ranges: a difference array and one cumulative XOR)
    keys = np.random.default_rng(0x5EED).integers(1, 2**63, size=len(consumers), dtype=np.uint64)
    lens = np.fromiter((len(c) for c in consumers), np.int64, len(consumers))
    flip = np.zeros(len(bounds), np.uint64)
    key = np.repeat(keys, lens)
    np.bitwise_xor.at(flip, np.searchsorted(bounds, need.start), key)
    np.bitwise_xor.at(flip, np.searchsorted(bounds, need.end), key)
    lo, hi = bounds[:-1], bounds[1:]
    keep = contains(todo, lo)
    lo, hi, sig = lo[keep], hi[keep], np.bitwise_xor.accumulate(flip)[:-1][keep]
    # runs: adjacent intervals with one consumer set
    adjacent = np.zeros(len(lo), bool)
    adjacent[1:] = lo[1:] == hi[:-1]
    first = np.flatnonzero(~adjacent | np.append(True, sig[1:] != sig[:-1]))
    r_lo = lo[first]
    r_hi = hi[np.append(first[1:], len(lo)) - 1]
    r_adj = adjacent[first]
    # join neighbouring small runs into groups of at most min_piece bytes
    length = r_hi - r_lo
    small = length < min_piece
    block_start = ~(small & np.append(False, small[:-1]) & r_adj)  # a new block of small runs
    block = np.cumsum(block_start) - 1
    before = np.cumsum(length) - length
    base = before[np.flatnonzero(block_start)][block]
    part = (before - base) // max(min_piece, 1)
    new_group = block_start | np.append(True, part[1:] != part[:-1])
    g_first = np.flatnonzero(new_group)
    g_lo = r_lo[g_first]
    g_hi = r_hi[np.append(g_first[1:], len(r_lo)) - 1]
    # chunks: equal parts of at most `chunk` bytes, never cutting inside an atom
    parts = -(-(g_hi - g_lo) // chunk)
    p_group = np.repeat(np.arange(len(g_lo)), parts)
    k_in = np.arange(int(parts.sum())) - np.repeat(np.cumsum(parts) - parts, parts)
    step = (g_hi - g_lo)[p_group] / parts[p_group]
    cuts = g_lo[p_group] + np.floor(k_in * step).astype(np.int64)
    if atoms is not None and len(atoms):
        i = np.searchsorted(atoms.start, cuts, side="right") - 1
        ok = i >= 0
        inside = np.zeros(len(cuts), bool)
        inside[ok] = (atoms.start[i[ok]] < cuts[ok]) & (cuts[ok] < atoms.end[i[ok]])
        cuts[inside] = np.minimum(atoms.end[i[inside]], g_hi[p_group[inside]])
    cuts[k_in == 0] = g_lo[p_group[k_in == 0]]
    p_hi = np.append(cuts[1:], 0)
    last = np.append(p_group[1:] != p_group[:-1], True)
    p_hi[last] = g_hi[p_group[last]]
    keep = p_hi > cuts
    p_lo, p_hi = cuts[keep], p_hi[keep]
    return Pieces(p_lo, p_hi, _place(p_lo, p_hi, consumers, node_of, load))


def _place(p_lo, p_hi, consumers, node_of, load) -> np.ndarray:
    """The node of each piece: the node of its consumers when they all run on one, else the least
    loaded of their nodes (ties: the one needing most of it), else the least loaded node."""
    n_nodes = int(node_of.max()) + 1 if len(node_of) else 0
    node = np.full(len(p_lo), NO_NODE, np.int64)
    if not n_nodes:
        return node
    # (node, piece, bytes the node needs of it) for every piece a node needs: sparse, since a
    # node usually needs few of the pieces
    t_node, t_piece, t_bytes = [], [], []
    for k in range(n_nodes):
        mine = merge(Ranges.concat(c for c, n in zip(consumers, node_of.tolist()) if n == k))
        idx = overlapping(p_lo, p_hi, mine)
        t_node.append(np.full(len(idx), k))
        t_piece.append(idx)
        t_bytes.append(below(mine, p_hi[idx]) - below(mine, p_lo[idx]))
    t_node, t_piece, t_bytes = np.concatenate(t_node), np.concatenate(t_piece), np.concatenate(t_bytes)
    takers = np.bincount(t_piece, minlength=len(p_lo))
    assigned = np.asarray(load if load is not None else np.zeros(n_nodes), np.int64).copy()
    single = takers[t_piece] == 1
    node[t_piece[single]] = t_node[single]
    np.add.at(assigned, t_node[single], (p_hi - p_lo)[t_piece[single]])
    order = np.argsort(t_piece[~single], kind="stable")
    m_node, m_piece, m_bytes = t_node[~single][order], t_piece[~single][order], t_bytes[~single][order]
    cuts = np.flatnonzero(np.diff(m_piece)) + 1
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(m_piece)]):  # shared: one at a time
        if b > a:
            cand, want = m_node[a:b], m_bytes[a:b]
            best = int(cand[np.lexsort((-want, assigned[cand]))[0]])
            p = int(m_piece[a])
            node[p] = best
            assigned[best] += int(p_hi[p] - p_lo[p])
    for p in np.flatnonzero(takers == 0).tolist():  # nobody's: checksum remainders
        best = int(np.argmin(assigned))
        node[p] = best
        assigned[best] += int(p_hi[p] - p_lo[p])
    return node


def below(r: Ranges, points: np.ndarray) -> np.ndarray:
    """Bytes of ``r`` (merged) below each point."""
    if not len(r):
        return np.zeros(len(points), np.int64)
    length = r.end - r.start
    before = np.cumsum(length) - length
    i = np.searchsorted(r.start, points, side="right") - 1
    ok = i >= 0
    out = np.zeros(len(points), np.int64)
    j = i[ok]
    out[ok] = before[j] + np.minimum(points[ok], r.end[j]) - r.start[j]
    return out
