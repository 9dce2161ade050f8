"""What ``Checkpoint.restore``/``read`` return: TF's status objects and their assertions.

The assertions see a restore as it stands when they are called (attaching objects later can make
one pass that failed before), over the objects a ``GraphView`` lists, as TF's
``CheckpointLoadStatus`` and ``InitializationOnlyStatus`` do.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from ..errors import RestoreAssertionError
from ..format.object_graph import ObjectGraph
from ..variable import Variable
from .tree import Optimizer, children_of
from .walk import Restore, update_uid

__all__ = ["CheckpointLoadStatus", "GraphView", "InitializationOnlyStatus"]


class GraphView:
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
            queue.extend(children_of(obj).values())
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

    def __init__(self, restore: Restore, view: GraphView):
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
            if obj is not None and update_uid(obj) < r.restore_uid:
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
