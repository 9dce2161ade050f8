"""Restore a TF2 checkpoint without writing the model: its object tree, built from its object graph.

``load_object_tree(ckpt)`` reads the checkpoint's ``TrackableObjectGraph`` and makes one Python
object per graph node, then restores every value through ``Checkpoint.read`` -- one parallel
plan, TF's matching walk, TF's status assertions. What each node becomes is decided from the
graph alone (:func:`plan_object_tree`, pure):

* a node with exactly one ``VARIABLE_VALUE`` and no children, whose value is in the bundle with a
  numpy dtype: a :class:`Variable` of the stored shape and dtype, named by the graph's full name;
* a node with slot variables (a TF1 optimizer): an :class:`Optimizer`, whose slots the restore
  creates (``opt.get_slot(var, "m")``);
* a node whose children are named ``"0"``, ``"1"``, ... ``"n-1"``: a :class:`NodeList`;
* a node with a child whose name is not a Python identifier (``"a.b"``, ``"x/y"``): a
  :class:`NodeDict` (attributes cannot have such names, dict keys can);
* anything else: a :class:`Node`.

An object reached along several edges is one Python object reachable along each of them, as in
TF. Children are reached as ``node.name`` or, for any name, ``node["name"]``; list items as
``node[i]``. Values the tree cannot hold (a ``tf.data`` iterator's ``ITERATOR_STATE``, other
non-variable attributes) are not restored; ``distrestore tree`` lists them and the status's
``assert_consumed`` names them.

Layer names: a Keras 3 checkpoint names its layers nowhere but in its variables' full names
(``sequential/dense/kernel`` under ``model/_functional/_operations/1``); the name scope that all of
a node's variables share is shown as that node's name (:attr:`ObjectSpec.scope`).
"""

from __future__ import annotations

import ast
import bisect
import keyword
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from . import restore
from .errors import TensorNotFoundError, UnsupportedCheckpointError
from .format.object_graph import OBJECT_GRAPH_PROTO_KEY, VARIABLE_VALUE_KEY, ObjectGraph, unescape_local_name
from .index import open_index
from .objects import Checkpoint, Node, NodeDict, NodeList, Optimizer, read_object_graph
from .storage import deadline_at
from .variable import Variable

__all__ = ["ObjectSpec", "format_object_tree", "load_object_tree", "plan_object_tree"]

VARIABLE, OPTIMIZER, LIST, DICT, NODE = "variable", "optimizer", "list", "dict", "node"


class ObjectSpec(NamedTuple):
    """What one graph node becomes."""

    node_id: int
    kind: str
    """``"variable"``, ``"optimizer"``, ``"list"``, ``"dict"`` or ``"node"``."""
    children: tuple[tuple[str, int], ...]
    """``(local name, node id)`` edges, list items in index order."""
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    full_name: str | None = None
    """A variable's shape, TF dtype name and the graph's full (TF1-style) name."""
    unrestored: tuple[str, ...] = ()
    """Attributes of this node the tree does not restore, each ``"NAME dtype[shape]"``."""
    scope: str | None = None
    """The name scope every variable directly under this node shares (a Keras layer's name)."""


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_dr_")


class _Keys:
    """Bundle keys that begin with a graph key (TF adds a suffix per saved tensor, e.g. an
    iterator's ``.../ITERATOR`` is stored as ``.../ITERATOR_STATE``); sorted once, on first use."""

    def __init__(self, entries: Mapping[str, Any]):
        self.entries = entries
        self._sorted: list[str] | None = None

    def describe(self, key: str) -> str:
        entry = self.entries.get(key)
        if entry is not None:
            return f"{entry.dtype.name}{list(entry.shape)}"
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        i = bisect.bisect_left(self._sorted, key)
        found = []
        while i < len(self._sorted) and self._sorted[i].startswith(key):
            e = self.entries[self._sorted[i]]
            found.append(f"{self._sorted[i]} {e.dtype.name}{list(e.shape)}")
            i += 1
        return ", ".join(found) if found else "(missing from the bundle)"


def plan_object_tree(graph: ObjectGraph, entries: Mapping[str, Any]) -> dict[int, ObjectSpec]:
    """Every node's :class:`ObjectSpec` by node id (``entries``: a ``CheckpointIndex.entries``)."""
    specs: dict[int, ObjectSpec] = {}
    keys = _Keys(entries)
    for nid, node in enumerate(graph.nodes):
        children = tuple((c.local_name, c.node_id) for c in node.children)
        attr = node.attribute(VARIABLE_VALUE_KEY)
        entry = entries.get(attr.checkpoint_key) if attr is not None else None
        if node.is_simple_variable and entry is not None and not entry.dtype.is_variant:
            specs[nid] = ObjectSpec(nid, VARIABLE, (), tuple(entry.shape), entry.dtype.name, attr.full_name or None)
            continue
        unrestored = tuple(f"{a.name}: {keys.describe(a.checkpoint_key)}" for a in node.attributes)
        names = [n for n, _ in children]
        if node.slot_variables:
            kind = OPTIMIZER
        elif names and sorted(names) == sorted(str(i) for i in range(len(names))):
            kind = LIST
            children = tuple(sorted(children, key=lambda c: int(c[0])))
        elif any(not _is_identifier(n) for n in names):
            kind = DICT
        else:
            kind = NODE
        specs[nid] = ObjectSpec(nid, kind, children, unrestored=unrestored)
    for nid, spec in specs.items():
        full_names = [specs[c].full_name for _, c in spec.children if specs[c].kind == VARIABLE]
        scopes = {n.rpartition("/")[0] for n in full_names if n}
        if full_names and len(scopes) == 1 and all(full_names) and "" not in scopes:
            specs[nid] = spec._replace(scope=scopes.pop())
    return specs


# -- paths ------------------------------------------------------------------------------------

_ACCESSOR = re.compile(r"""\.([A-Za-z_]\w*)|\[(\d+)\]|\[('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]""")


def accessor(spec: ObjectSpec, local_name: str, parent_type: type) -> str:
    """How Python reaches child ``local_name`` of the object ``spec`` describes."""
    if spec.kind == LIST:
        return f"[{local_name}]"
    if _is_identifier(local_name) and not any(local_name in vars(k) for k in parent_type.__mro__):
        return f".{local_name}"
    return f"[{local_name!r}]"


def _local_names(path) -> list[str]:
    """Local names along ``path``: ``".model._operations[1]"`` (as ``distrestore tree`` prints),
    ``"model/_operations/1"`` (escaped names joined by ``/``, as in checkpoint keys), or a sequence
    of local names."""
    if not isinstance(path, str):
        return [str(p) for p in path]
    if path.startswith((".", "[")):
        names, pos = [], 0
        while pos < len(path):
            m = _ACCESSOR.match(path, pos)
            if m is None:
                raise ValueError(f"cannot read object path {path!r} at position {pos}")
            attr, index, quoted = m.groups()
            names.append(attr if attr is not None else index if index is not None else ast.literal_eval(quoted))
            pos = m.end()
        return names
    stripped = path.strip("/")
    return [unescape_local_name(p) for p in stripped.split("/")] if stripped else []


def _chain(graph: ObjectGraph, path) -> list[tuple[str, int]]:
    """``(local name, node id)`` edges from the root to the object at ``path``."""
    chain, nid = [], 0
    for name in _local_names(path):
        child = graph.nodes[nid].child(name)
        if child is None:
            have = [c.local_name for c in graph.nodes[nid].children]
            raise TensorNotFoundError(
                f"no object at path {path!r} in the checkpoint's object graph: {name!r} is not a child "
                f"(children there: {have})"
            )
        chain.append((name, child))
        nid = child
    return chain


# -- building ---------------------------------------------------------------------------------

_TYPES = {OPTIMIZER: Optimizer, LIST: NodeList, DICT: NodeDict, NODE: Node}


def _reachable(specs: dict[int, ObjectSpec], start: int) -> list[int]:
    seen, order, stack = {start}, [start], [start]
    while stack:
        for _, c in specs[stack.pop()].children:
            if c not in seen:
                seen.add(c)
                order.append(c)
                stack.append(c)
    return order


def _build(specs: dict[int, ObjectSpec], ids: list[int]) -> dict[int, Any]:
    objects: dict[int, Any] = {}
    for nid in ids:
        s = specs[nid]
        if s.kind == VARIABLE:
            objects[nid] = Variable(shape=s.shape, dtype=s.dtype, name=s.full_name)
        else:
            objects[nid] = _TYPES[s.kind]()
    for nid in ids:  # children after every object exists: the graph may share objects or cycle
        s, obj = specs[nid], objects[nid]
        if s.kind == LIST:
            obj.extend(objects[c] for _, c in s.children)
        elif s.kind != VARIABLE:
            for name, c in s.children:
                obj[name] = objects[c]
    return objects


class _GraphOnce:
    """A fetch function that reads the object graph's value once and hands the same value to a
    second request for it (``load_object_tree`` builds the tree from the graph, then
    ``Checkpoint.read`` reads the graph again); every other request goes to ``inner`` (default
    ``distrestore.restore.fetch``)."""

    def __init__(self, inner=None):
        self.inner = inner if inner is not None else restore.fetch
        self.graph = None

    def __call__(self, requests, **kwargs):
        if len(requests) != 1 or requests[0].name != OBJECT_GRAPH_PROTO_KEY or requests[0].region is not None:
            return self.inner(requests, **kwargs)
        if self.graph is None:
            self.graph = self.inner(requests, **kwargs)
        return self.graph


def load_object_tree(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    path=None,
    executor="threads",
    verify: bool = True,
    max_inflight_bytes: int | None = None,
    progress=None,
    return_status: bool = False,
    timeout: float | None = None,
    deadline: float | None = None,
    **read_kwargs,
):
    """The object tree of a TF2 checkpoint (``tf.train.Checkpoint``, Keras, SavedModel variables),
    built from its object graph and restored, without the model's code::

        tree = dr.load_object_tree("ckpts/tf2")
        tree.model.dense1._kernel.numpy()  # the paths `distrestore tree` prints

    Every value is read in one parallel plan (``executor``, ``verify``, ``max_inflight_bytes``,
    ``progress`` and other keywords as for ``Checkpoint.read``). ``timeout``: seconds a storage
    request may stall before it is retried; ``deadline``: seconds for the whole call (opening,
    the object graph and every value; a ``StorageError`` when either runs out). ``path``
    restores one subtree and returns its object: ``".model._functional"`` (as ``distrestore
    tree`` prints paths), ``"model/_functional"`` (as checkpoint keys write them) or a sequence
    of local names. With ``return_status=True`` the result is ``(tree, status)``, the
    ``CheckpointLoadStatus`` whose assertions behave as TF's (``assert_consumed()`` passes on a
    full load of a checkpoint whose every value the tree holds); otherwise the status is
    dropped, partial loads included, without an unused-values warning. The rules for what each
    node becomes are in this module's docstring. A TF1 checkpoint has no object graph:
    ``UnsupportedCheckpointError``.
    """
    at = deadline_at(deadline)
    index = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=at)
    fetch = _GraphOnce(read_kwargs.pop("fetch", None))  # the read below asks for the graph again
    graph = read_object_graph(index, fetch=fetch, **restore.left_of(timeout, at))
    if not graph.nodes:
        raise UnsupportedCheckpointError(f"{index.prefix}: the object graph is empty")
    specs = plan_object_tree(graph, index.entries)
    chain = _chain(graph, path) if path is not None else []
    target = chain[-1][1] if chain else 0
    objects = _build(specs, _reachable(specs, target))
    # the way down to the subtree: plain nodes holding one child each (the walk defers the rest)
    root = parent = objects[0] if 0 in objects else Node()
    for name, nid in chain:
        child = objects.get(nid)
        if child is None:
            child = objects[nid] = Node()
        if isinstance(parent, NodeList):  # only when the whole list is in the subtree: already there
            parent = child
            continue
        parent[name] = child
        parent = child
    status = Checkpoint(root=root).read(
        index,
        fetch=fetch,
        executor=executor,
        verify=verify,
        max_inflight_bytes=max_inflight_bytes,
        progress=progress,
        **restore.left_of(timeout, at),
        **read_kwargs,
    )
    result = objects[target]
    if return_status:
        return result, status
    status.expect_partial()
    return result


# -- printing ---------------------------------------------------------------------------------


class _Line(NamedTuple):
    depth: int
    last: bool
    kind: str  # "child", "shared" (a node printed before), "attr" (not restored), "slot"
    node_id: int  # the child's, the slot variable's, or the parent's for "attr"
    step: str  # how Python reaches it from its parent; for "attr"/"slot", the text
    path: str


def _walk(graph: ObjectGraph, specs: dict[int, ObjectSpec]) -> Iterator[_Line]:
    """The tree in print order (depth first, children in graph order); a node that is not a
    variable is expanded at its first path only."""
    expanded = {0}
    paths = {0: ""}

    def visit(nid: int, path: str, depth: int) -> Iterator[_Line]:
        s = specs[nid]
        parent_type = _TYPES.get(s.kind, Node)
        slots = graph.nodes[nid].slot_variables
        n = len(s.unrestored) + len(s.children) + len(slots)
        i = 0
        for a in s.unrestored:
            i += 1
            yield _Line(depth, i == n, "attr", nid, a, path)
        for name, cid in s.children:
            i += 1
            step = accessor(s, name, parent_type)
            if specs[cid].kind != VARIABLE and cid in expanded:
                yield _Line(depth, i == n, "shared", cid, step, paths[cid])
                continue
            paths.setdefault(cid, path + step)
            yield _Line(depth, i == n, "child", cid, step, path + step)
            if specs[cid].kind != VARIABLE:
                expanded.add(cid)
                yield from visit(cid, path + step, depth + 1)
        for sl in slots:
            i += 1
            owner = paths.get(sl.original_variable_node_id, f"<node {sl.original_variable_node_id}>")
            yield _Line(depth, i == n, "slot", sl.slot_variable_node_id, f"slot {sl.slot_name!r} of {owner}", path)

    yield from visit(0, "", 0)


def _variable_text(s: ObjectSpec) -> str:
    return f"{s.dtype}{list(s.shape)}" + (f"  {s.full_name}" if s.full_name else "")


def format_object_tree(graph: ObjectGraph, entries: Mapping[str, Any]) -> str:
    """The tree :func:`load_object_tree` builds, one line per object, each named by how Python
    reaches it from its parent (``.model``, ``[1]``, ``['a.b']``): a variable with its dtype,
    shape and full name, a node with the name scope its variables share. An object reached a
    second time refers to its first path; slot variables are listed under their optimizer."""
    if not graph.nodes:
        return "(empty object graph)"
    specs = plan_object_tree(graph, entries)
    lines = ["(root)"]
    first: dict[int, str] = {}
    stems: list[str] = []
    for line in _walk(graph, specs):
        del stems[line.depth :]
        prefix = "".join(stems) + ("└── " if line.last else "├── ")
        stems.append("    " if line.last else "│   ")
        s = specs.get(line.node_id)
        if line.kind == "attr":
            lines.append(f"{prefix}[not restored: {line.step}]")
        elif line.kind == "slot":
            lines.append(f"{prefix}{line.step}" + (f"  {_variable_text(s)}" if s.kind == VARIABLE else ""))
        elif line.kind == "shared":
            lines.append(f"{prefix}{line.step}  (same object as {line.path or '(root)'})")
        elif s.kind == VARIABLE:
            text = _variable_text(s)
            if line.node_id in first:
                text += f"  (same variable as {first[line.node_id]})"
            first.setdefault(line.node_id, line.path)
            lines.append(f"{prefix}{line.step}  {text}")
        else:
            parts = [line.step]
            if s.scope:
                parts.append(s.scope)
            if s.kind == LIST:
                parts.append(f"(list of {len(s.children)})")
            elif s.kind == DICT:
                parts.append("(dict)")
            if not graph.nodes[line.node_id].has_values:
                parts.append("(no values)")
            lines.append(prefix + "  ".join(parts))
    return "\n".join(lines)


def object_paths(graph: ObjectGraph, entries: Mapping[str, Any]) -> dict[str, str]:
    """Every variable path :func:`format_object_tree` prints (``.model.dense1._kernel``) -> the
    bundle key of its value."""
    specs = plan_object_tree(graph, entries)
    return {
        line.path: graph.nodes[line.node_id].attribute(VARIABLE_VALUE_KEY).checkpoint_key
        for line in _walk(graph, specs)
        if line.kind == "child" and specs[line.node_id].kind == VARIABLE
    }
