"""The object tree that object-based restore matches: ``Node``, ``NodeList``, ``NodeDict`` and
``Optimizer`` (TF's trackables), and ``tracked_children``.

Attaching a child under a name that a restore left pending runs that restore (see ``walk``). Names
beginning with ``_dr_`` are the package's reserved attributes on these objects: ``walk``,
``status`` and ``checkpoint`` use them, nothing outside ``distrestore.objects`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..variable import Variable

if TYPE_CHECKING:
    from .walk import Batch, Position

__all__ = ["Node", "NodeDict", "NodeList", "Optimizer", "children_of", "is_data_descriptor", "tracked_children", "wrap"]


def wrap(value):
    """The trackable form of ``value``, or None if it is not trackable (TF's wrap_or_unwrap)."""
    if isinstance(value, (Node, Variable)):
        return value
    if isinstance(value, (list, tuple)):
        return NodeList(value)
    if isinstance(value, dict):
        return NodeDict(value)
    return None


def children_of(obj) -> dict[str, Any]:
    if isinstance(obj, Node):
        return obj._dr_children
    return {}


def tracked_children(obj) -> dict[str, Any]:
    """An object's tracked children by local name (TF's ``_trackable_children``), in tracking
    order; a variable has none."""
    return dict(children_of(obj))


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
        if name.startswith("_dr_") or is_data_descriptor(type(self), name):
            object.__setattr__(self, name, value)
            return
        if self.__dict__.get(name, _MISSING) is value:
            return
        wrapped = wrap(value)
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
        wrapped = wrap(value)
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
        from .walk import Batch  # the walk imports the tree; the tree needs it only here

        batch = Batch()
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


def is_data_descriptor(cls, name: str) -> bool:
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
            w = wrap(v)
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
                w = wrap(v)
                if w is not None:
                    self._dr_children[str(i)] = w
            raise

    def _dr_store(self, value):
        w = wrap(value)
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
        w = wrap(value)
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
        from .walk import Batch  # see Node._dr_track

        batch = Batch()
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

    def _dr_register_slot(self, batch: Batch, slot_name: str, var: Variable, slot: Variable) -> None:
        self._dr_slots.setdefault(slot_name, {})[id(var)] = (var, slot)
        batch.record(lambda: self._dr_slots.get(slot_name, {}).pop(id(var), None))

    def _dr_pop_deferred_slots(self, batch: Batch, slot_name: str, var: Variable) -> list:
        by_var = self._dr_deferred_slots.get(slot_name, {})
        hit = by_var.pop(id(var), None)
        if hit is None:
            return []
        batch.record(lambda: by_var.__setitem__(id(var), hit))
        return list(hit[1])

    def _dr_create_or_restore_slot(
        self, batch: Batch, position: Position, slot_name: str, var: Variable
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
