"""The restore walk (TF's ``CheckpointPosition`` / ``_CheckpointRestoreCoordinator``) and its
undo journal.

A :class:`Restore` is one ``restore``/``read`` call: the checkpoint, its object graph and what got
bound. A :class:`Batch` is one step that restores (a call, an attach, an ``add_slot``): it walks
positions breadth-first, binds objects, defers what has no object yet, gathers and checks the
reads, fetches them in one call and assigns; every change to bookkeeping is journaled and undone
if the step fails, so a failed step leaves no trace.
"""

from __future__ import annotations

import collections
import itertools
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..errors import TensorNotFoundError
from ..format.object_graph import VARIABLE_VALUE_KEY, ObjectGraph
from ..index import CheckpointIndex
from ..restore import TensorRequest
from ..variable import Variable
from .tree import Node, Optimizer, children_of

__all__ = ["Batch", "FetchFn", "Position", "Restore", "UnusedCheckpointValuesWarning", "update_uid"]


class UnusedCheckpointValuesWarning(UserWarning):
    """Checkpoint values that no object took, reported when a restore is forgotten (TF logs it)."""


# TF's ``ops.uid()`` for restores and ``Trackable._update_uid``: the newest restore that wrote an
# object. Kept here, by object identity, so that ``Variable`` stays a plain value holder.
_restore_uids = itertools.count(1)
_update_uids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def update_uid(obj) -> int:
    """The uid of the newest restore that wrote ``obj`` (-1: none)."""
    return _update_uids.get(obj, -1)


class _SlotRestoration(NamedTuple):
    optimizer_id: int
    slot_variable_id: int
    slot_name: str


class _DeferredSlotRestoration(NamedTuple):
    original_variable: Any
    slot_variable_id: int
    slot_name: str


FetchFn = Callable[..., list]


class _UnusedReport:
    """What the finalizer of a restore reports; holds no reference to the restore itself."""

    def __init__(self, graph: ObjectGraph, matched: set, unused_attributes: dict, source: str):
        self.graph = graph
        self.matched = matched
        self.unused_attributes = unused_attributes
        self.source = source
        self.expect_partial = False

    def __call__(self) -> None:
        if self.expect_partial:
            return
        names = None
        unused_nodes = []
        for nid, node in enumerate(self.graph.nodes):
            if node.attributes and nid not in self.matched:
                names = names or self.graph.node_names()
                unused_nodes.append(names.get(nid, f"<node {nid}>"))
        unused_attrs = []
        for nid, attrs in self.unused_attributes.items():
            names = names or self.graph.node_names()
            unused_attrs.append((names.get(nid, f"<node {nid}>"), attrs))
        if not (unused_nodes or unused_attrs):
            return
        lines = [
            f"A restore from {self.source} is being forgotten with unrestored values "
            "(call status.expect_partial() to silence this):"
        ]
        lines += [f"  Value in checkpoint could not be found in the restored object: {p}" for p in unused_nodes]
        lines += [
            f"  An attribute in the restored object could not be found in the checkpoint. Object: {p}, attribute: {a}"
            for p, a in unused_attrs
        ]
        warnings.warn("\n".join(lines), UnusedCheckpointValuesWarning, stacklevel=2)


class Restore:
    """One ``restore``/``read`` call: the checkpoint, its graph, what got bound and what is left."""

    def __init__(self, index: CheckpointIndex, graph: ObjectGraph, fetch: FetchFn, fetch_kwargs: dict):
        self.index = index
        self.graph = graph
        self.fetch = fetch
        self.fetch_kwargs = fetch_kwargs
        self.restore_uid = next(_restore_uids)
        self.object_by_proto_id: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self.matched_proto_ids: set[int] = set()
        self.all_python_objects: weakref.WeakSet = weakref.WeakSet()
        self.unused_attributes: dict[int, list[str]] = {}
        self.slot_restorations: dict[int, list[_SlotRestoration]] = collections.defaultdict(list)
        self.deferred_slot_restorations: dict[int, list[_DeferredSlotRestoration]] = {}
        for nid, node in enumerate(graph.nodes):
            for s in node.slot_variables:
                self.slot_restorations[s.original_variable_node_id].append(
                    _SlotRestoration(nid, s.slot_variable_node_id, s.slot_name)
                )
        self._names: dict[int, str] | None = None
        self.report = _UnusedReport(graph, self.matched_proto_ids, self.unused_attributes, index.prefix)
        weakref.finalize(self, self.report)

    @property
    def node_names(self) -> dict[int, str]:
        if self._names is None:
            self._names = self.graph.node_names()
        return self._names

    def name(self, nid: int) -> str:
        return self.node_names.get(nid, f"<node {nid}>")


class Position:
    """TF's ``CheckpointPosition``: a node of one restore's graph."""

    __slots__ = ("restore", "proto_id")

    def __init__(self, restore: Restore, proto_id: int):
        self.restore = restore
        self.proto_id = proto_id

    @property
    def restore_uid(self) -> int:
        return self.restore.restore_uid

    @property
    def object_proto(self):
        return self.restore.graph.nodes[self.proto_id]

    def __repr__(self) -> str:
        return f"<restore of {self.restore.name(self.proto_id)} from {self.restore.index.prefix}>"


class _Read(NamedTuple):
    variable: Variable
    restore: Restore
    key: str
    uid: int


def _fetch_key(restore: Restore) -> tuple:
    """Restores read alike (same fetch function and options) share one fetch call."""

    def part(v):
        try:
            hash(v)
            return v
        except TypeError:
            return ("id", id(v))

    return (id(restore.fetch),) + tuple((k, part(v)) for k, v in sorted(restore.fetch_kwargs.items()))


class Batch:
    """One step that restores: walks positions, gathers and checks reads, fetches them in one
    call, assigns. Every change to bookkeeping is journaled and undone if the step fails."""

    def __init__(self):
        self._undo: list[Callable[[], Any]] = []
        self._reads: dict[int, _Read] = {}

    def record(self, undo: Callable[[], Any]) -> None:
        self._undo.append(undo)

    def execute(self, walk: Callable[[], Any]) -> None:
        try:
            walk()
            self._run_reads()
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            # the journal's closures refer to the batch: drop them, or the cycle would keep
            # restores (and their unused-values warning) alive until a garbage collection
            self._undo = []
            self._reads = {}

    # -- the walk ---------------------------------------------------------------------------

    def bind(self, position: Position, obj) -> bool:
        r, pid = position.restore, position.proto_id
        if obj not in r.all_python_objects:
            r.all_python_objects.add(obj)
            self.record(lambda: r.all_python_objects.discard(obj))
        if pid not in r.matched_proto_ids:
            r.matched_proto_ids.add(pid)
            self.record(lambda: r.matched_proto_ids.discard(pid))
        current = r.object_by_proto_id.get(pid)
        if current is None:
            r.object_by_proto_id[pid] = obj
            self.record(lambda: r.object_by_proto_id.pop(pid, None))
            return True
        if current is not obj:
            warnings.warn(
                f"Inconsistent references when restoring {r.name(pid)} from {r.index.prefix}: it is "
                f"already bound to {current!r}, not rebinding it to {obj!r} (the checkpoint shares "
                "one object between two paths that are different objects here)",
                stacklevel=3,
            )
        return False

    def restore_position(self, position: Position, obj) -> None:
        """``CheckpointPosition.restore``: bind, then restore the subtree breadth-first."""
        if not self.bind(position, obj):
            return
        queue = collections.deque([(position, obj)])
        while queue:
            pos, o = queue.popleft()
            self._single_restore(pos, o)
            self._queue_children(pos, o, queue)
            self._queue_slot_variables(pos, o, queue)

    def _set_uid(self, obj, uid: int) -> None:
        old = _update_uids.get(obj)
        _update_uids[obj] = uid
        self.record(lambda: _update_uids.pop(obj, None) if old is None else _update_uids.__setitem__(obj, old))

    def _single_restore(self, pos: Position, obj) -> None:
        r = pos.restore
        if r.restore_uid <= update_uid(obj):
            return  # a newer restore already wrote it
        node = pos.object_proto
        if node.attributes:
            if isinstance(obj, Variable):
                self._gather_variable(pos, obj)
            else:
                lst = r.unused_attributes.setdefault(pos.proto_id, [])
                n = len(lst)
                lst.extend(a.name for a in node.attributes)
                self.record(
                    lambda: (
                        lst.__delitem__(slice(n, None)),
                        r.unused_attributes.pop(pos.proto_id) if not lst else None,
                    )
                )
        self._set_uid(obj, r.restore_uid)

    def _gather_variable(self, pos: Position, var: Variable) -> None:
        # A variable saves through _serialize_to_tensors: its one tensor is VARIABLE_VALUE under
        # the object's ".ATTRIBUTES/" prefix, whatever else the node lists.
        r = pos.restore
        node = pos.object_proto
        attr = node.attribute(VARIABLE_VALUE_KEY)
        if attr is not None:
            key = attr.checkpoint_key
        else:
            first = node.attributes[0].checkpoint_key
            cut = first.find("/.ATTRIBUTES/")
            key = (first[: cut + len("/.ATTRIBUTES/")] if cut >= 0 else first + "/") + VARIABLE_VALUE_KEY
        where = f"checkpoint value {key!r} for object {r.name(pos.proto_id)} (in {r.index.prefix})"
        entry = r.index.entries.get(key)
        if entry is None:
            raise TensorNotFoundError(f"{where}: key not found in the checkpoint")
        var.check_assignable(entry.shape, entry.dtype, what=where)
        previous = self._reads.get(id(var))
        if previous is None or previous.uid < r.restore_uid:
            self._reads[id(var)] = _Read(var, r, key, r.restore_uid)
            self.record(
                lambda: (
                    self._reads.pop(id(var), None) if previous is None else self._reads.__setitem__(id(var), previous)
                )
            )

    def _queue_children(self, pos: Position, obj, queue) -> None:
        r = pos.restore
        children = children_of(obj)
        for ref in pos.object_proto.children:
            if r.object_by_proto_id.get(ref.node_id) is not None:
                continue
            child_pos = Position(r, ref.node_id)
            local = children.get(ref.local_name)
            if local is None:
                if child_pos.object_proto.has_values and isinstance(obj, Node):
                    self._defer(obj, ref.local_name, child_pos)
            elif self.bind(child_pos, local):
                queue.append((child_pos, local))

    def _defer(self, node: Node, name: str, position: Position) -> None:
        deferred = node._dr_deferred
        lst = deferred.setdefault(name, [])
        lst.append(position)

        def undo():
            lst.remove(position)
            if not lst and deferred.get(name) is lst:
                del deferred[name]

        self.record(undo)

    def _queue_slot_variables(self, pos: Position, obj, queue) -> None:
        r, pid = pos.restore, pos.proto_id
        deferred = r.deferred_slot_restorations.pop(pid, None)
        if deferred:
            self.record(lambda: r.deferred_slot_restorations.__setitem__(pid, deferred))
            if isinstance(obj, Optimizer):
                for d in deferred:
                    hit = self._slot_position(pos, obj, d.original_variable, d.slot_variable_id, d.slot_name)
                    if hit is not None:
                        queue.append(hit)
        restorations = r.slot_restorations.pop(pid, None)
        if restorations:
            self.record(lambda: r.slot_restorations.__setitem__(pid, restorations))
            for s in restorations:
                opt = r.object_by_proto_id.get(s.optimizer_id)
                if opt is None:
                    lst = r.deferred_slot_restorations.setdefault(s.optimizer_id, [])
                    lst.append(_DeferredSlotRestoration(obj, s.slot_variable_id, s.slot_name))
                    self.record(lambda lst=lst: lst.pop())
                elif isinstance(opt, Optimizer):
                    hit = self._slot_position(pos, opt, obj, s.slot_variable_id, s.slot_name)
                    if hit is not None:
                        queue.append(hit)

    def _slot_position(self, pos: Position, opt: Optimizer, var, slot_id: int, slot_name: str):
        if not isinstance(var, Variable):
            return None
        slot_pos = Position(pos.restore, slot_id)
        slot = opt._dr_create_or_restore_slot(self, slot_pos, slot_name, var)
        if slot is not None and self.bind(slot_pos, slot):
            return slot_pos, slot
        return None

    # -- reading and assigning --------------------------------------------------------------

    def _run_reads(self) -> None:
        reads = list(self._reads.values())
        if not reads:
            return
        groups: dict[tuple, list[_Read]] = {}
        keys: dict[int, tuple] = {}
        for rd in reads:
            k = keys.get(id(rd.restore))
            if k is None:
                k = keys[id(rd.restore)] = _fetch_key(rd.restore)
            groups.setdefault(k, []).append(rd)
        values: list[tuple[Variable, np.ndarray]] = []
        for group in groups.values():
            first = group[0].restore
            requests = [TensorRequest(rd.restore.index, rd.key) for rd in group]
            arrays = first.fetch(requests, **first.fetch_kwargs)
            if len(arrays) != len(requests):
                raise ValueError(f"fetch returned {len(arrays)} arrays for {len(requests)} requests")
            for rd, arr in zip(group, arrays):
                arr = np.asarray(arr)
                entry = rd.restore.index.entries[rd.key]
                rd.variable.check_assignable(
                    arr.shape, entry.dtype, what=f"checkpoint value {rd.key!r} (in {rd.restore.index.prefix})"
                )
                values.append((rd.variable, arr))
        for var, arr in values:
            var.assign(arr)
