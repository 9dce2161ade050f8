"""Object-based restore, as ``tf.train.Checkpoint`` does it: ``Checkpoint``, ``Node``, deferred
restore on attach, optimizer slot variables and TF's status assertions.

A checkpoint's object graph is matched against a tree of :class:`Node` objects by local name from
the root. Every matched variable is read in one parallel plan (``distrestore.restore.fetch``);
every checkpoint subtree that has values but no object yet is kept on its would-be parent and
restored the moment an object is attached under that name, newest restore first. The walk follows
``tensorflow/python/checkpoint/restore.py`` (``CheckpointPosition``) step by step, so the
assertions of the returned status raise in the same cases as TF's ``CheckpointLoadStatus``.

Differences from TF, on purpose:

* Values are validated (key present, shape, dtype) while walking, read in one ``fetch`` and
  assigned only when every read succeeded. On any error the whole step (a ``restore``/``read``
  call, an attach, an ``add_slot``) is undone: no value changes, no binding or deferred restore
  is recorded, and an attach that failed leaves the child unattached.
* TF logs unused checkpoint values when its restore coordinator is garbage collected; here the
  same report is a :class:`UnusedCheckpointValuesWarning` (``warnings.warn``) at the same moment:
  once the status object and every deferred restore of that checkpoint are gone (a pending
  restore keeps it alive), or at interpreter exit. ``status.expect_partial()`` silences it.
* ``restore`` creates ``save_counter`` before walking, not after, so that it is read in the same
  plan as everything else; the values and assertions are the same as TF's.
* Lists and dicts assigned to a node are copied into :class:`NodeList`/:class:`NodeDict` (TF wraps
  them in place); assigning a non-trackable value to a tracked name stops tracking it.
* A checkpoint without an object graph (TF1 ``Saver``, name-based) is refused; use
  ``VariableStore``/``init_from_checkpoint`` for those.

Not thread-safe: restore and attach from one thread at a time.
"""

from __future__ import annotations

import collections
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from .errors import RestoreAssertionError, TensorNotFoundError, UnsupportedCheckpointError
from .format.object_graph import OBJECT_GRAPH_PROTO_KEY, VARIABLE_VALUE_KEY, ObjectGraph, parse_object_graph
from .index import CheckpointIndex, open_checkpoint
from .variable import Variable

__all__ = [
    "Checkpoint",
    "CheckpointLoadStatus",
    "InitializationOnlyStatus",
    "Node",
    "NodeDict",
    "NodeList",
    "Optimizer",
    "UnusedCheckpointValuesWarning",
    "read_object_graph",
    "tracked_children",
]


class UnusedCheckpointValuesWarning(UserWarning):
    """Checkpoint values that no object took, reported when a restore is forgotten (TF logs it)."""


# TF's ``ops.uid()`` for restores and ``Trackable._update_uid``: the newest restore that wrote an
# object. Kept here, by object identity, so that ``Variable`` stays a plain value holder.
_restore_uids = itertools.count(1)
_update_uids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _update_uid(obj) -> int:
    return _update_uids.get(obj, -1)


# -- the object tree --------------------------------------------------------------------------


def _wrap(value):
    """The trackable form of ``value``, or None if it is not trackable (TF's wrap_or_unwrap)."""
    if isinstance(value, (Node, Variable)):
        return value
    if isinstance(value, (list, tuple)):
        return NodeList(value)
    if isinstance(value, dict):
        return NodeDict(value)
    return None


def _children(obj) -> dict[str, Any]:
    if isinstance(obj, Node):
        return obj._dr_children
    return {}


def tracked_children(obj) -> dict[str, Any]:
    """An object's tracked children by local name (TF's ``_trackable_children``), in tracking
    order; a variable has none."""
    return dict(_children(obj))


class Node:
    """A trackable object: a named tree of children (nodes and variables) to restore into.

    ``Node(dense1=Node(_kernel=Variable(shape=[1, 4])))``; ``node.x = child`` or
    ``node["a/b.c"] = child`` tracks a child under that local name, lists become
    :class:`NodeList` (children ``"0"``, ``"1"``, ...) and dicts :class:`NodeDict` (children named
    by their keys). Attaching a child under a name that a previous restore could not match
    restores it right away from that checkpoint. Subclass it to model your own objects; names
    beginning with ``_dr_`` are reserved.
    """

    _dr_state: dict[str, Callable[[], Any]] = {"_dr_children": dict, "_dr_deferred": dict}
    """Per-instance internals, made in ``__new__`` so subclasses need not call ``__init__`` first."""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        for klass in reversed(cls.__mro__):
            for name, factory in vars(klass).get("_dr_state", {}).items():
                object.__setattr__(self, name, factory())
        return self

    def __init__(self, **children):
        for name, value in children.items():
            setattr(self, name, value)

    # -- attribute and item access ----------------------------------------------------------

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_dr_") or _is_data_descriptor(type(self), name):
            object.__setattr__(self, name, value)
            return
        if self.__dict__.get(name, _MISSING) is value:
            return
        wrapped = _wrap(value)
        if wrapped is None:
            self._dr_untrack(name)
            object.__setattr__(self, name, value)
        else:
            self._dr_track(name, wrapped)
            object.__setattr__(self, name, wrapped)

    def __getattr__(self, name: str):
        # only called when normal lookup fails: children tracked by item with identifier names
        if not name.startswith("_dr_"):
            children = self.__dict__.get("_dr_children")
            if children is not None and name in children:
                return children[name]
        raise AttributeError(f"{type(self).__name__!s} object has no attribute or child {name!r}")

    def __delattr__(self, name: str) -> None:
        tracked = name in self._dr_children
        self._dr_untrack(name)
        if name in self.__dict__ or not tracked:
            object.__delattr__(self, name)

    def __getitem__(self, name: str):
        try:
            return self._dr_children[name]
        except KeyError:
            raise KeyError(name) from None

    def __setitem__(self, name: str, value) -> None:
        if not isinstance(name, str):
            raise TypeError(f"child names are strings, got {name!r}")
        wrapped = _wrap(value)
        if wrapped is None:
            raise TypeError(
                f"only nodes, variables, lists and dicts can be children; got {type(value).__name__} for {name!r}"
            )
        self._dr_track(name, wrapped)
        if name in self.__dict__:
            object.__setattr__(self, name, wrapped)

    def __delitem__(self, name: str) -> None:
        if name not in self._dr_children:
            raise KeyError(name)
        self._dr_untrack(name)
        self.__dict__.pop(name, None)

    # -- tracking ---------------------------------------------------------------------------

    def _dr_track(self, name: str, value) -> None:
        """TF's ``_track_trackable(value, name, overwrite=True)``: a new name runs the restores
        deferred under it (newest first), atomically; a replaced one does not."""
        children = self._dr_children
        current = children.get(name)
        if current is value:
            return
        children[name] = value
        if current is not None:
            return
        pending = self._dr_deferred.pop(name, None)
        if not pending:
            return
        batch = _Batch()
        batch.record(lambda: _undo_track(self, name, pending))
        batch.execute(
            lambda: [
                batch.restore_position(p, value) for p in sorted(pending, key=lambda p: p.restore_uid, reverse=True)
            ]
        )

    def _dr_untrack(self, name: str) -> None:
        self._dr_children.pop(name, None)

    def __repr__(self) -> str:
        names = ", ".join(self._dr_children)
        return f"<dr.{type(self).__name__} ({names})>"


_MISSING = object()


def _undo_track(node: Node, name: str, pending: list) -> None:
    node._dr_children.pop(name, None)
    node._dr_deferred[name] = pending + node._dr_deferred.get(name, [])


def _is_data_descriptor(cls, name: str) -> bool:
    attr = getattr(cls, name, None)
    return attr is not None and hasattr(attr, "__set__")


class NodeList(Node):
    """A list of children, named ``"0"``, ``"1"``, ... (TF's ``ListWrapper``).

    Appending a child under a new index runs the restores deferred for that index. Mutations that
    shift elements (``insert``, ``pop``, ``del``) rename the children after them, as TF's names
    would be on the next save: an index that already existed keeps its (already run) restores,
    an index that did not runs its deferred restores like an append.
    """

    _dr_state = {"_dr_items": list}

    def __init__(self, items: Iterable = ()):
        super().__init__()
        self.extend(items)

    def _dr_sync(self, old_items: list) -> None:
        """Recompute the children from the items; attach (with deferred restore) new indices."""
        new = {}
        for i, v in enumerate(self._dr_items):
            w = _wrap(v)
            if w is not None:
                new[str(i)] = w
        fresh = [(n, v) for n, v in new.items() if n not in self._dr_children]
        for n in [n for n in self._dr_children if n not in new]:
            del self._dr_children[n]
        for n, v in new.items():
            if n in self._dr_children:
                self._dr_children[n] = v
        try:
            for n, v in fresh:
                self._dr_track(n, v)
        except BaseException:
            object.__setattr__(self, "_dr_items", old_items)
            self._dr_children.clear()
            for i, v in enumerate(old_items):
                w = _wrap(v)
                if w is not None:
                    self._dr_children[str(i)] = w
            raise

    def _dr_store(self, value):
        w = _wrap(value)
        return value if w is None else w

    def append(self, value) -> None:
        old = list(self._dr_items)
        self._dr_items.append(self._dr_store(value))
        self._dr_sync(old)

    def extend(self, values: Iterable) -> None:
        old = list(self._dr_items)
        self._dr_items.extend(self._dr_store(v) for v in values)
        self._dr_sync(old)

    def insert(self, index: int, value) -> None:
        old = list(self._dr_items)
        self._dr_items.insert(index, self._dr_store(value))
        self._dr_sync(old)

    def pop(self, index: int = -1):
        old = list(self._dr_items)
        value = self._dr_items.pop(index)
        self._dr_sync(old)
        return value

    def __getitem__(self, index):
        if isinstance(index, str):
            return Node.__getitem__(self, index)
        return self._dr_items[index]

    def __setitem__(self, index, value) -> None:
        if isinstance(index, str):
            index = int(index)
        old = list(self._dr_items)
        if isinstance(index, slice):
            self._dr_items[index] = [self._dr_store(v) for v in value]
        else:
            self._dr_items[index] = self._dr_store(value)
        self._dr_sync(old)

    def __delitem__(self, index) -> None:
        old = list(self._dr_items)
        del self._dr_items[index]
        self._dr_sync(old)

    def __len__(self) -> int:
        return len(self._dr_items)

    def __iter__(self):
        return iter(list(self._dr_items))

    def __repr__(self) -> str:
        return f"<dr.NodeList {self._dr_items!r}>"


class NodeDict(Node):
    """A dict of children named by their (string) keys (TF's ``_DictWrapper``)."""

    _dr_state = {"_dr_items": dict}

    def __init__(self, items=(), **kwargs):
        super().__init__()
        self.update(items, **kwargs)

    def __setitem__(self, key, value) -> None:
        w = _wrap(value)
        if w is None:
            self._dr_items[key] = value
            if isinstance(key, str):
                self._dr_untrack(key)
            return
        if not isinstance(key, str):
            raise TypeError(f"a NodeDict's keys name its children and must be strings, got {key!r}")
        self._dr_track(key, w)
        self._dr_items[key] = w

    def __getitem__(self, key):
        return self._dr_items[key]

    def __delitem__(self, key) -> None:
        del self._dr_items[key]
        if isinstance(key, str):
            self._dr_untrack(key)

    def __contains__(self, key) -> bool:
        return key in self._dr_items

    def __iter__(self):
        return iter(list(self._dr_items))

    def __len__(self) -> int:
        return len(self._dr_items)

    def keys(self):
        return self._dr_items.keys()

    def values(self):
        return self._dr_items.values()

    def items(self):
        return self._dr_items.items()

    def get(self, key, default=None):
        return self._dr_items.get(key, default)

    def update(self, items=(), **kwargs) -> None:
        pairs = items.items() if hasattr(items, "items") else items
        for k, v in itertools.chain(pairs, kwargs.items()):
            self[k] = v

    def __repr__(self) -> str:
        return f"<dr.NodeDict {self._dr_items!r}>"


class Optimizer(Node):
    """A node that also owns slot variables per (variable, slot name), like a
    ``tf.compat.v1.train.Optimizer``: checkpoint keys ``<var>/.OPTIMIZER_SLOT/<opt>/<slot>/...``.

    When a restore binds both an optimizer node and a variable with a slot in the checkpoint, the
    slot variable is created (shape and dtype of the variable) and restored, as TF does when
    executing eagerly. ``add_slot`` creates one yourself and restores it if a checkpoint has
    a pending value for it. Ordinary state (``beta1_power``, Keras 3's ``_variables``) is plain
    children.
    """

    # slot name -> {id(var): (var, slot)}, and -> {id(var): (var, [pending positions])}
    _dr_state = {"_dr_slots": dict, "_dr_deferred_slots": dict}

    def get_slot(self, var: Variable, name: str) -> Variable | None:
        hit = self._dr_slots.get(name, {}).get(id(var))
        return None if hit is None else hit[1]

    def get_slot_names(self) -> list[str]:
        return sorted(self._dr_slots)

    def add_slot(self, var: Variable, slot_name: str, initial_value=None) -> Variable:
        """The slot ``slot_name`` for ``var``, created (zeros of ``var``'s shape and dtype, or
        ``initial_value``) if absent; a new slot takes any pending checkpoint value for it."""
        existing = self.get_slot(var, slot_name)
        if existing is not None:
            return existing
        slot = Variable(
            initial_value,
            shape=var.shape,
            dtype=var.tf_dtype.name,
            name=f"{var.name}/{slot_name}" if var.name else None,
        )
        batch = _Batch()
        self._dr_register_slot(batch, slot_name, var, slot)
        pending = self._dr_pop_deferred_slots(batch, slot_name, var)
        if pending:
            batch.execute(
                lambda: [
                    batch.restore_position(p, slot) for p in sorted(pending, key=lambda p: p.restore_uid, reverse=True)
                ]
            )
        return slot

    def _dr_all_slots(self) -> Iterable[tuple[Variable, str, Variable]]:
        for name, by_var in self._dr_slots.items():
            for var, slot in by_var.values():
                yield var, name, slot

    def _dr_register_slot(self, batch: _Batch, slot_name: str, var: Variable, slot: Variable) -> None:
        self._dr_slots.setdefault(slot_name, {})[id(var)] = (var, slot)
        batch.record(lambda: self._dr_slots.get(slot_name, {}).pop(id(var), None))

    def _dr_pop_deferred_slots(self, batch: _Batch, slot_name: str, var: Variable) -> list:
        by_var = self._dr_deferred_slots.get(slot_name, {})
        hit = by_var.pop(id(var), None)
        if hit is None:
            return []
        batch.record(lambda: by_var.__setitem__(id(var), hit))
        return list(hit[1])

    def _dr_create_or_restore_slot(
        self, batch: _Batch, position: _Position, slot_name: str, var: Variable
    ) -> Variable | None:
        """TF1 ``Optimizer._create_or_restore_slot_variable`` (eager)."""
        slot = self.get_slot(var, slot_name)
        if slot is None and position.object_proto.is_simple_variable:
            attr = position.object_proto.attributes[0]
            slot = Variable(shape=var.shape, dtype=var.tf_dtype.name, name=attr.full_name or None)
            self._dr_register_slot(batch, slot_name, var, slot)
        if slot is not None:
            batch.restore_position(position, slot)
        else:
            by_var = self._dr_deferred_slots.setdefault(slot_name, {})
            entry = by_var.setdefault(id(var), (var, []))
            entry[1].append(position)
            batch.record(lambda: entry[1].remove(position))
        return slot


# -- restore bookkeeping (TF's _CheckpointRestoreCoordinator / CheckpointPosition) ----------


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


class _Restore:
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


class _Position:
    """TF's ``CheckpointPosition``: a node of one restore's graph."""

    __slots__ = ("restore", "proto_id")

    def __init__(self, restore: _Restore, proto_id: int):
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
    restore: _Restore
    key: str
    uid: int


def _fetch_key(restore: _Restore) -> tuple:
    """Restores read alike (same fetch function and options) share one fetch call."""

    def part(v):
        try:
            hash(v)
            return v
        except TypeError:
            return ("id", id(v))

    return (id(restore.fetch),) + tuple((k, part(v)) for k, v in sorted(restore.fetch_kwargs.items()))


class _Batch:
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

    def bind(self, position: _Position, obj) -> bool:
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

    def restore_position(self, position: _Position, obj) -> None:
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

    def _single_restore(self, pos: _Position, obj) -> None:
        r = pos.restore
        if r.restore_uid <= _update_uid(obj):
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

    def _gather_variable(self, pos: _Position, var: Variable) -> None:
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

    def _queue_children(self, pos: _Position, obj, queue) -> None:
        r = pos.restore
        children = _children(obj)
        for ref in pos.object_proto.children:
            if r.object_by_proto_id.get(ref.node_id) is not None:
                continue
            child_pos = _Position(r, ref.node_id)
            local = children.get(ref.local_name)
            if local is None:
                if child_pos.object_proto.has_values and isinstance(obj, Node):
                    self._defer(obj, ref.local_name, child_pos)
            elif self.bind(child_pos, local):
                queue.append((child_pos, local))

    def _defer(self, node: Node, name: str, position: _Position) -> None:
        deferred = node._dr_deferred
        lst = deferred.setdefault(name, [])
        lst.append(position)

        def undo():
            lst.remove(position)
            if not lst and deferred.get(name) is lst:
                del deferred[name]

        self.record(undo)

    def _queue_slot_variables(self, pos: _Position, obj, queue) -> None:
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

    def _slot_position(self, pos: _Position, opt: Optimizer, var, slot_id: int, slot_name: str):
        if not isinstance(var, Variable):
            return None
        slot_pos = _Position(pos.restore, slot_id)
        slot = opt._dr_create_or_restore_slot(self, slot_pos, slot_name, var)
        if slot is not None and self.bind(slot_pos, slot):
            return slot_pos, slot
        return None

    # -- reading and assigning --------------------------------------------------------------

    def _run_reads(self) -> None:
        reads = list(self._reads.values())
        if not reads:
            return
        from .restore import TensorRequest  # the engine: same layer, imported late

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


# -- status objects ----------------------------------------------------------------------------


class _GraphView:
    """The objects a ``Checkpoint`` saves: its root's tree plus attached dependencies."""

    def __init__(self, root, attached: list[tuple[str, Any]]):
        self.root = root
        self.attached = attached  # live list: save_counter may be appended later

    def list_objects(self) -> list:
        seen: dict[int, Any] = {}
        queue = collections.deque([self.root] + [obj for _, obj in self.attached])
        while queue:
            obj = queue.popleft()
            if id(obj) in seen:
                continue
            seen[id(obj)] = obj
            queue.extend(_children(obj).values())
        objects = list(seen.values())
        # slot variables of the optimizers in the graph, for variables in the graph (TF's
        # ObjectGraphView lists them with the rest)
        for opt in [o for o in objects if isinstance(o, Optimizer)]:
            for var, _, slot in opt._dr_all_slots():
                if id(var) in seen and id(slot) not in seen:
                    seen[id(slot)] = slot
                    objects.append(slot)
        return objects


def _objects_with_attributes(objects: Iterable) -> list:
    return [o for o in objects if isinstance(o, Variable)]


class CheckpointLoadStatus:
    """What ``Checkpoint.restore``/``read`` returns: TF's ``CheckpointLoadStatus`` assertions.

    The assertions see the restore as it stands when they are called, so attaching objects
    later (deferred restore) can make one pass that failed before. Each returns the status.
    """

    def __init__(self, restore: _Restore, view: _GraphView):
        self._restore = restore
        self._view = view
        self._root = view.root  # keep the root alive like TF

    def assert_consumed(self) -> CheckpointLoadStatus:
        """Every checkpoint value with an object, every object with a value (as far as the
        object tree and the pending restores go)."""
        r = self._restore
        self.assert_existing_objects_matched()
        for nid, node in enumerate(r.graph.nodes):
            if not node.attributes:
                continue  # only nodes that hold values matter
            if r.object_by_proto_id.get(nid) is None:
                keys = [a.checkpoint_key for a in node.attributes]
                raise RestoreAssertionError(
                    f"Unresolved object in checkpoint {r.name(nid)}: no object matched its values {keys}"
                )
        if any(r.slot_restorations.values()):
            pending = {
                r.name(v): [f"{r.name(s.optimizer_id)}'s '{s.slot_name}'" for s in lst]
                for v, lst in r.slot_restorations.items()
                if lst
            }
            raise RestoreAssertionError(f"Unresolved slot restorations: {pending}")
        if r.unused_attributes:
            msgs = []
            for nid, attrs in r.unused_attributes.items():
                obj = r.object_by_proto_id.get(nid)
                msgs.append(f"{r.name(nid)} ({obj!r}): {attrs}")
            raise RestoreAssertionError(
                "Unused attributes in these objects (the attributes exist in the checkpoint but "
                "were not restored):\n" + "\n".join(msgs)
            )
        return self

    def assert_existing_objects_matched(self) -> CheckpointLoadStatus:
        """Every variable that exists in the object tree got a value from this checkpoint (or a
        newer restore); checkpoint values without objects are allowed."""
        r = self._restore
        for nid in range(len(r.graph.nodes)):
            obj = r.object_by_proto_id.get(nid)
            if obj is not None and _update_uid(obj) < r.restore_uid:
                raise RestoreAssertionError(f"Object {r.name(nid)} ({obj!r}) not assigned a value from checkpoint.")
        for obj in self._view.list_objects():
            r.all_python_objects.add(obj)
        bound = {id(o) for o in r.object_by_proto_id.values()}
        unused = [o for o in _objects_with_attributes(list(r.all_python_objects)) if id(o) not in bound]
        if unused:
            shown = unused[:10]
            raise RestoreAssertionError(
                f"Found {len(unused)} Python objects that were not bound to checkpointed values, "
                f"likely due to changes in the Python program. Showing {len(shown)} of "
                f"{len(unused)} unmatched objects: {shown}"
            )
        return self

    def assert_nontrivial_match(self) -> CheckpointLoadStatus:
        """Something besides the root matched."""
        r = self._restore
        for obj in self._view.list_objects():
            r.all_python_objects.add(obj)
        if len(r.object_by_proto_id) <= 1:
            bound = {id(o) for o in r.object_by_proto_id.values()}
            unused = [o for o in _objects_with_attributes(list(r.all_python_objects)) if id(o) not in bound]
            if unused:
                raise RestoreAssertionError(
                    "Nothing except the root object matched a checkpointed value. Typically this "
                    "means that the checkpoint does not match the Python program. The following "
                    f"objects have no matching checkpointed value: {unused}"
                )
            raise RestoreAssertionError(f"Nothing to load. No dependencies have been added to {self._view.root!r} yet.")
        return self

    def expect_partial(self) -> CheckpointLoadStatus:
        """Silence the :class:`UnusedCheckpointValuesWarning` for this restore."""
        self._restore.report.expect_partial = True
        return self

    def run_restore_ops(self, session=None) -> None:
        """Nothing to do: values are assigned eagerly (TF's eager behaviour)."""

    def initialize_or_restore(self, session=None) -> None:
        """Nothing to do: values are assigned eagerly (TF's eager behaviour)."""

    @property
    def object_graph(self) -> ObjectGraph:
        """The checkpoint's decoded object graph."""
        return self._restore.graph

    @property
    def checkpoint_path(self) -> str:
        return self._restore.index.prefix

    def __repr__(self) -> str:
        r = self._restore
        return (
            f"<dr.CheckpointLoadStatus {r.index.prefix}: {len(r.object_by_proto_id)} of "
            f"{len(r.graph.nodes)} checkpoint objects bound>"
        )


class InitializationOnlyStatus:
    """``restore(None)``: nothing restored; every assertion fails, like TF's."""

    def __init__(self, root):
        self._root = root

    def _fail(self):
        raise RestoreAssertionError("No checkpoint specified (save_path=None); nothing is being restored.")

    def assert_consumed(self):
        self._fail()

    def assert_existing_objects_matched(self):
        self._fail()

    def assert_nontrivial_match(self):
        self._fail()

    def expect_partial(self):
        return self

    def run_restore_ops(self, session=None) -> None:
        pass

    def initialize_or_restore(self, session=None) -> None:
        pass


# -- Checkpoint --------------------------------------------------------------------------------


def _default_fetch(requests, **kwargs):
    from .restore import fetch  # the engine: same layer, imported late

    return fetch(requests, **kwargs)


def _read_graph(index: CheckpointIndex, fetch: FetchFn, fetch_kwargs: dict) -> ObjectGraph:
    if not index.has_tensor(OBJECT_GRAPH_PROTO_KEY):
        raise UnsupportedCheckpointError(
            f"{index.prefix} has no {OBJECT_GRAPH_PROTO_KEY}: it is a name-based (TF1 Saver) "
            "checkpoint, which object-based restore cannot match. Restore it by name with "
            "distrestore.VariableStore and init_from_checkpoint."
        )
    from .restore import TensorRequest

    value = fetch([TensorRequest(index, OBJECT_GRAPH_PROTO_KEY)], **fetch_kwargs)[0]
    data = np.asarray(value, dtype=object).reshape(-1)[0] if not isinstance(value, (bytes, bytearray)) else value
    return parse_object_graph(bytes(data), source=index.prefix)


def read_object_graph(ckpt_dir_or_file, *, storage_options: dict | None = None) -> ObjectGraph:
    """The decoded object graph of a TF2 checkpoint: ``print(graph)`` shows the tree,
    ``graph.checkpoint_key("model/dense1/_kernel")`` finds a value's key."""
    index = open_checkpoint(ckpt_dir_or_file, storage_options=storage_options)
    return _read_graph(index, _default_fetch, {})


class Checkpoint(Node):
    """``tf.train.Checkpoint``: a root node with ``restore``/``read`` and a ``save_counter``.

    ``Checkpoint(model=..., optimizer=...)`` makes the checkpoint object the root with these
    children; ``Checkpoint(root=node)`` makes ``node`` the root (TF >= 2.4; for checkpoints of
    ``Model.save_weights``), any other keyword arguments then being attached to it as extra
    dependencies, restored from the checkpoint root's children of the same names.
    """

    def __init__(self, root=None, **kwargs):
        object.__setattr__(self, "_dr_save_counter", None)
        attached: list[tuple[str, Any]] | None = None
        graph_root = None
        if root is not None:
            graph_root = _wrap(root)
            if not isinstance(graph_root, Node):
                raise ValueError(f"`Checkpoint` was expecting root to be a Node, got {root!r}")
            attached = []
            kwargs["root"] = graph_root
            object.__setattr__(self, "_dr_save_counter", _children(graph_root).get("save_counter"))
        for k, v in sorted(kwargs.items(), key=lambda kv: kv[0]):
            w = _wrap(v)
            if w is None:
                raise ValueError(
                    f"`Checkpoint` was expecting {k} to be a trackable object (a Node, "
                    f"a Variable, or a list or dict of them), got {v!r}"
                )
            self._dr_track(k, w)
            if not _is_data_descriptor(type(self), k):  # `root` stays the property
                object.__setattr__(self, k, w)
            if graph_root is not None and k != "root":
                child = _children(graph_root).get(k)
                if child is None:
                    attached.append((k, w))
                elif child is not w:
                    raise ValueError(
                        f"Cannot create a Checkpoint with keyword argument {k} if root.{k} already exists."
                    )
        # the view is made on demand: a stored view of `self` would be a reference cycle, and
        # a cycle delays the unused-values warning to the next garbage collection
        object.__setattr__(self, "_dr_graph_root", graph_root)
        object.__setattr__(self, "_dr_attached", attached if attached is not None else [])

    @property
    def _dr_view(self) -> _GraphView:
        return _GraphView(self if self._dr_graph_root is None else self._dr_graph_root, self._dr_attached)

    @property
    def save_counter(self) -> Variable:
        """An int64 scalar variable, created on first use (``restore`` creates it)."""
        self._dr_maybe_create_save_counter()
        return self._dr_save_counter

    def _dr_maybe_create_save_counter(self) -> None:
        if self._dr_save_counter is not None:
            return
        counter = Variable(0, shape=[], dtype="int64", name="save_counter")
        object.__setattr__(self, "_dr_save_counter", counter)
        self._dr_track("save_counter", counter)
        if self._dr_graph_root is not None:
            self._dr_attached.append(("save_counter", counter))
            root = self._dr_graph_root
            pending = root._dr_deferred.pop("save_counter", None)
            if pending:
                # TF restores only the first pending restore here (restore[0])
                batch = _Batch()
                batch.record(lambda: root._dr_deferred.__setitem__("save_counter", pending))
                batch.execute(lambda: batch.restore_position(pending[0], counter))

    def read(
        self,
        save_path,
        *,
        storage_options: dict | None = None,
        executor="threads",
        verify: bool = True,
        max_inflight_bytes: int | None = None,
        progress=None,
        fetch: FetchFn | None = None,
    ) -> CheckpointLoadStatus:
        """Restore what the checkpoint has for the objects that exist, defer the rest; no
        ``save_counter`` is expected (TF's ``read``, for checkpoints written by ``write``).

        ``save_path``: a prefix, a directory with a ``checkpoint`` file, a SavedModel directory
        or an opened ``CheckpointIndex``. All matched values are read as one plan through
        ``fetch`` (default ``distrestore.restore.fetch``, same signature; a service's for
        example) with the given ``executor``/``verify``/``max_inflight_bytes``/``progress``;
        deferred restores of this checkpoint later use the same.
        """
        restore = self._dr_open(save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch)
        return self._dr_walk(restore)

    def restore(
        self,
        save_path,
        *,
        storage_options: dict | None = None,
        executor="threads",
        verify: bool = True,
        max_inflight_bytes: int | None = None,
        progress=None,
        fetch: FetchFn | None = None,
    ):
        """``read``, and the ``save_counter`` is created (and restored with the rest): a
        checkpoint without one (written by ``write``) fails ``assert_existing_objects_matched``.
        ``save_path=None`` returns a status whose assertions all fail, like TF."""
        if save_path is None:
            self._dr_maybe_create_save_counter()
            return InitializationOnlyStatus(self._dr_view.root)
        restore = self._dr_open(save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch)
        created = self._dr_save_counter is None
        self._dr_maybe_create_save_counter()
        try:
            status = self._dr_walk(restore)
        except BaseException:
            if created:  # leave the object tree as it was before the call
                self._dr_remove_save_counter()
            raise
        if created and self._dr_graph_root is not None:
            # TF creates the counter after the walk and consumes the root's pending restore of
            # "save_counter" with it; here the walk restored it as an attached dependency
            pending = self._dr_graph_root._dr_deferred.get("save_counter", [])
            pending[:] = [p for p in pending if p.restore is not restore]
            if not pending:
                self._dr_graph_root._dr_deferred.pop("save_counter", None)
        return status

    def _dr_remove_save_counter(self) -> None:
        counter = self._dr_save_counter
        object.__setattr__(self, "_dr_save_counter", None)
        if self._dr_children.get("save_counter") is counter:
            del self._dr_children["save_counter"]
        self._dr_attached[:] = [(n, o) for n, o in self._dr_attached if o is not counter]

    def _dr_open(self, save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch) -> _Restore:
        index = open_checkpoint(save_path, storage_options=storage_options)
        kwargs = dict(executor=executor, verify=verify, max_inflight_bytes=max_inflight_bytes, progress=progress)
        fetch_fn = fetch if fetch is not None else _default_fetch
        graph = _read_graph(index, fetch_fn, kwargs)
        return _Restore(index, graph, fetch_fn, kwargs)

    def _dr_walk(self, restore: _Restore) -> CheckpointLoadStatus:
        view = self._dr_view
        batch = _Batch()

        def walk():
            batch.restore_position(_Position(restore, 0), view.root)
            root_children = restore.graph.nodes[0].children if restore.graph.nodes else ()
            for name, obj in list(view.attached):
                proto_id = next((c.node_id for c in root_children if c.local_name == name), None)
                if proto_id is None or restore.object_by_proto_id.get(proto_id) is not None:
                    continue
                batch.restore_position(_Position(restore, proto_id), obj)

        if not restore.graph.nodes:
            return CheckpointLoadStatus(restore, view)
        try:
            batch.execute(walk)
        except BaseException:
            restore.report.expect_partial = True  # undone: nothing of it is left to report
            raise
        return CheckpointLoadStatus(restore, view)

    @property
    def root(self):
        """The root of the object graph (``self`` unless ``Checkpoint(root=...)``)."""
        return self._dr_view.root

    def __repr__(self) -> str:
        return f"<dr.Checkpoint ({', '.join(self._dr_children)})>"
