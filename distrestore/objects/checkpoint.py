"""``Checkpoint`` (TF's ``tf.train.Checkpoint``): the root of an object tree with ``restore``
and ``read``, and ``read_object_graph``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import restore as engine
from ..errors import UnsupportedCheckpointError
from ..format.object_graph import OBJECT_GRAPH_PROTO_KEY, ObjectGraph, parse_object_graph
from ..index import CheckpointIndex, open_index
from ..restore import TensorRequest, left_of, time_limits
from ..storage import deadline_at
from ..variable import Variable
from .status import CheckpointLoadStatus, GraphView, InitializationOnlyStatus
from .tree import Node, children_of, is_data_descriptor, wrap
from .walk import Batch, FetchFn, Position, Restore

__all__ = ["Checkpoint", "read_object_graph"]


def _engine_fetch(requests, **kwargs):
    """``distrestore.restore.fetch``, looked up at each call (tests patch it)."""
    return engine.fetch(requests, **kwargs)


def _read_graph(index: CheckpointIndex, fetch: FetchFn, fetch_kwargs: dict) -> ObjectGraph:
    if not index.has_tensor(OBJECT_GRAPH_PROTO_KEY):
        raise UnsupportedCheckpointError(
            f"{index.prefix} has no {OBJECT_GRAPH_PROTO_KEY}: it is a name-based (TF1 Saver) "
            "checkpoint, which object-based restore cannot match. Restore it by name with "
            "distrestore.VariableStore and init_from_checkpoint."
        )
    value = fetch([TensorRequest(index, OBJECT_GRAPH_PROTO_KEY)], **fetch_kwargs)[0]
    data = np.asarray(value, dtype=object).reshape(-1)[0] if not isinstance(value, (bytes, bytearray)) else value
    return parse_object_graph(bytes(data), source=index.prefix)


def read_object_graph(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    fetch: FetchFn | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> ObjectGraph:
    """The decoded object graph of a TF2 checkpoint: ``print(graph)`` shows the tree,
    ``graph.checkpoint_key("model/dense1/_kernel")`` finds a value's key. ``fetch``: reads its
    value, as for ``Checkpoint.read`` (default ``distrestore.restore.fetch``); ``timeout``: seconds
    a storage request may stall; ``deadline``: seconds for the call, opening included."""
    at = deadline_at(deadline)
    index = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=at)
    return _read_graph(index, fetch if fetch is not None else _engine_fetch, left_of(timeout, at))


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
            graph_root = wrap(root)
            if not isinstance(graph_root, Node):
                raise ValueError(f"`Checkpoint` was expecting root to be a Node, got {root!r}")
            attached = []
            kwargs["root"] = graph_root
            object.__setattr__(self, "_dr_save_counter", children_of(graph_root).get("save_counter"))
        for k, v in sorted(kwargs.items(), key=lambda kv: kv[0]):
            w = wrap(v)
            if w is None:
                raise ValueError(
                    f"`Checkpoint` was expecting {k} to be a trackable object (a Node, "
                    f"a Variable, or a list or dict of them), got {v!r}"
                )
            self._dr_track(k, w)
            if not is_data_descriptor(type(self), k):  # `root` stays the property
                object.__setattr__(self, k, w)
            if graph_root is not None and k != "root":
                child = children_of(graph_root).get(k)
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
    def _dr_view(self) -> GraphView:
        return GraphView(self if self._dr_graph_root is None else self._dr_graph_root, self._dr_attached)

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
                batch = Batch()
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
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> CheckpointLoadStatus:
        """Restore what the checkpoint has for the objects that exist, defer the rest; no
        ``save_counter`` is expected (TF's ``read``, for checkpoints written by ``write``).

        ``save_path``: a prefix, a directory with a ``checkpoint`` file, a SavedModel directory
        or an opened ``CheckpointIndex``. All matched values are read as one plan through
        ``fetch`` (default ``distrestore.restore.fetch``, same signature; a service's for
        example) with the given ``executor``/``verify``/``max_inflight_bytes``/``progress``
        and, when given, ``timeout`` (seconds per storage request) and ``deadline`` (seconds
        for the call: opening the checkpoint, reading its object graph and the values together;
        a ``StorageError`` when either runs out); deferred restores of this checkpoint later use
        the same, each attach with its own ``deadline``.
        """
        restore, at = self._dr_open(
            save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch, timeout, deadline
        )
        return self._dr_walk(restore, at)

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
        timeout: float | None = None,
        deadline: float | None = None,
    ):
        """``read``, and the ``save_counter`` is created (and restored with the rest): a
        checkpoint without one (written by ``write``) fails ``assert_existing_objects_matched``.
        ``save_path=None`` returns a status whose assertions all fail, like TF. The keywords are
        ``read``'s (``timeout``/``deadline`` included)."""
        if save_path is None:
            self._dr_maybe_create_save_counter()
            return InitializationOnlyStatus(self._dr_view.root)
        restore, at = self._dr_open(
            save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch, timeout, deadline
        )
        created = self._dr_save_counter is None
        self._dr_maybe_create_save_counter()
        try:
            status = self._dr_walk(restore, at)
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

    def _dr_open(
        self, save_path, storage_options, executor, verify, max_inflight_bytes, progress, fetch, timeout, deadline
    ) -> tuple[Restore, float | None]:
        """The restore of ``save_path`` (index and object graph read) and the call's deadline as
        a wall-clock time (None without one)."""
        at = deadline_at(deadline)
        index = open_index(save_path, storage_options=storage_options, timeout=timeout, at=at)
        kwargs = dict(executor=executor, verify=verify, max_inflight_bytes=max_inflight_bytes, progress=progress)
        fetch_fn = fetch if fetch is not None else _engine_fetch
        graph = _read_graph(index, fetch_fn, {**kwargs, **left_of(timeout, at)})
        # deferred restores of this checkpoint get the call's own limits, each its whole deadline
        return Restore(index, graph, fetch_fn, {**kwargs, **time_limits(timeout, deadline)}), at

    def _dr_walk(self, restore: Restore, at: float | None = None) -> CheckpointLoadStatus:
        if at is None:
            return self._dr_walk_now(restore)
        kept = restore.fetch_kwargs  # this call's values get what is left of its deadline
        restore.fetch_kwargs = {**kept, **left_of(kept.get("timeout"), at)}
        try:
            return self._dr_walk_now(restore)
        finally:
            restore.fetch_kwargs = kept

    def _dr_walk_now(self, restore: Restore) -> CheckpointLoadStatus:
        view = self._dr_view
        batch = Batch()

        def walk():
            batch.restore_position(Position(restore, 0), view.root)
            root_children = restore.graph.nodes[0].children if restore.graph.nodes else ()
            for name, obj in list(view.attached):
                proto_id = next((c.node_id for c in root_children if c.local_name == name), None)
                if proto_id is None or restore.object_by_proto_id.get(proto_id) is not None:
                    continue
                batch.restore_position(Position(restore, proto_id), obj)

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
