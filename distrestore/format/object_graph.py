"""The ``_CHECKPOINTABLE_OBJECT_GRAPH`` of a TF2 object-based checkpoint, decoded by hand.

A ``TrackableObjectGraph`` lists the saved objects (node 0 is the root), the named edges between
them, the tensors each one saved (with the bundle key they were saved under) and the optimizer
slot variables. This module decodes it, names its nodes and prints it; matching it against live
objects is ``distrestore.objects``' job.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from ..errors import CorruptCheckpointError, TensorNotFoundError
from .wire import LENGTH, VARINT, field, field_spans, to_signed64

OBJECT_GRAPH_PROTO_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE_KEY = "VARIABLE_VALUE"
OBJECT_ATTRIBUTES_NAME = ".ATTRIBUTES"
OPTIMIZER_SLOT_NAME = ".OPTIMIZER_SLOT"
SERIALIZE_TO_TENSORS_NAME = ".TENSORS"

__all__ = [
    "OBJECT_GRAPH_PROTO_KEY",
    "VARIABLE_VALUE_KEY",
    "ObjectGraph",
    "ObjectReference",
    "RegisteredSaver",
    "SerializedTensor",
    "SlotVariableReference",
    "TrackableObject",
    "escape_local_name",
    "unescape_local_name",
    "object_path_to_string",
    "checkpoint_key",
    "parse_object_graph",
]


# -- names (tensorflow/python/trackable/trackable_utils.py) ---------------------------------


def escape_local_name(name: str) -> str:
    """TF's escaping of one edge name inside a key: ``.`` -> ``..`` first, then ``/`` -> ``.S``."""
    return name.replace(".", "..").replace("/", ".S")


def unescape_local_name(escaped: str) -> str:
    """Inverse of :func:`escape_local_name` (``..`` -> ``.``, ``.S`` -> ``/``)."""
    out = []
    i, n = 0, len(escaped)
    while i < n:
        c = escaped[i]
        if c == "." and i + 1 < n and escaped[i + 1] in ".S":
            out.append("." if escaped[i + 1] == "." else "/")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def object_path_to_string(path: Iterable[str]) -> str:
    """Escaped local names joined with ``/`` (the root's path is ``""``)."""
    return "/".join(escape_local_name(n) for n in path)


def checkpoint_key(path: Iterable[str], attribute: str = VARIABLE_VALUE_KEY) -> str:
    """The bundle key TF writes for ``attribute`` of the object at ``path``."""
    return f"{object_path_to_string(path)}/{OBJECT_ATTRIBUTES_NAME}/{escape_local_name(attribute)}"


# -- messages ---------------------------------------------------------------------------------


class ObjectReference(NamedTuple):
    """An edge: ``local_name`` of the parent leads to node ``node_id``."""

    node_id: int
    local_name: str


class SerializedTensor(NamedTuple):
    """One saved tensor of an object."""

    name: str
    """The attribute name, e.g. ``VARIABLE_VALUE``."""
    full_name: str
    """The TF1-style global name (``w``, ``w/Adam``); informational."""
    checkpoint_key: str
    """The bundle key the value is stored under: the only authority for reading it."""


class SlotVariableReference(NamedTuple):
    """An optimizer's slot ``slot_name`` for the variable at ``original_variable_node_id``."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


class RegisteredSaver(NamedTuple):
    name: str
    object_name: str


class TrackableObject(NamedTuple):
    """One node of the graph."""

    children: tuple[ObjectReference, ...] = ()
    attributes: tuple[SerializedTensor, ...] = ()
    slot_variables: tuple[SlotVariableReference, ...] = ()
    registered_saver: RegisteredSaver | None = None
    has_checkpoint_values: bool | None = None
    """None when the writer did not set the field (older TF)."""

    @property
    def has_values(self) -> bool:
        """Whether this subtree holds values (TF's test before deferring a restore)."""
        if self.has_checkpoint_values is not None:
            return self.has_checkpoint_values
        return bool(self.children or self.attributes or self.slot_variables or self.registered_saver is not None)

    @property
    def is_simple_variable(self) -> bool:
        """Exactly one ``VARIABLE_VALUE`` attribute and no children (TF's restore-on-create test)."""
        return len(self.attributes) == 1 and self.attributes[0].name == VARIABLE_VALUE_KEY and not self.children

    def attribute(self, name: str) -> SerializedTensor | None:
        for a in self.attributes:
            if a.name == name:
                return a
        return None

    def child(self, local_name: str) -> int | None:
        for c in self.children:
            if c.local_name == local_name:
                return c.node_id
        return None


def _int32(v: int) -> int:
    v = to_signed64(v)
    return v - (1 << 32) if v >= 1 << 31 else v


def _decode_object(buf: bytes, pos: int, end: int) -> TrackableObject:
    children, attributes, slots = [], [], []
    saver = None
    has_values = None
    for num, wire, a, b in field_spans(buf, pos, end):
        if wire != LENGTH:
            continue
        if num == 1:  # ObjectReference
            node_id, name = 0, ""
            for n2, w2, a2, b2 in field_spans(buf, a, b):
                if n2 == 1 and w2 == VARINT:
                    node_id = _int32(a2)
                elif n2 == 2 and w2 == LENGTH:
                    name = buf[a2:b2].decode("utf-8", "surrogateescape")
            children.append(ObjectReference(node_id, name))
        elif num == 2:  # SerializedTensor (field 4, optional_restore, of older protos skipped)
            strs = ["", "", ""]
            for n2, w2, a2, b2 in field_spans(buf, a, b):
                if w2 == LENGTH and 1 <= n2 <= 3:
                    strs[n2 - 1] = buf[a2:b2].decode("utf-8", "surrogateescape")
            attributes.append(SerializedTensor(*strs))
        elif num == 3:  # SlotVariableReference
            original, slot_name, slot_id = 0, "", 0
            for n2, w2, a2, b2 in field_spans(buf, a, b):
                if n2 == 1 and w2 == VARINT:
                    original = _int32(a2)
                elif n2 == 2 and w2 == LENGTH:
                    slot_name = buf[a2:b2].decode("utf-8", "surrogateescape")
                elif n2 == 3 and w2 == VARINT:
                    slot_id = _int32(a2)
            slots.append(SlotVariableReference(original, slot_name, slot_id))
        elif num == 4:  # RegisteredSaver
            strs = ["", ""]
            for n2, w2, a2, b2 in field_spans(buf, a, b):
                if w2 == LENGTH and 1 <= n2 <= 2:
                    strs[n2 - 1] = buf[a2:b2].decode("utf-8", "surrogateescape")
            # proto3: an empty message is "set", but TF tests the saver's name
            saver = RegisteredSaver(*strs) if any(strs) else None
        elif num == 5:  # google.protobuf.BoolValue
            has_values = False
            for n2, w2, a2, _ in field_spans(buf, a, b):
                if n2 == 1 and w2 == VARINT:
                    has_values = bool(a2)
    return TrackableObject(tuple(children), tuple(attributes), tuple(slots), saver, has_values)


def parse_object_graph(data: bytes, *, source: str = "checkpoint") -> ObjectGraph:
    """Decode a serialized ``TrackableObjectGraph``; unknown fields are skipped."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    buf = bytes(data)
    nodes = []
    try:
        for num, wire, a, b in field_spans(buf, 0, len(buf)):
            if num == 1 and wire == LENGTH:
                nodes.append(_decode_object(buf, a, b))
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"{source}: cannot parse {OBJECT_GRAPH_PROTO_KEY}: {e}") from None
    graph = ObjectGraph(tuple(nodes))
    n = len(nodes)
    for i, node in enumerate(nodes):
        refs = [c.node_id for c in node.children]
        for s in node.slot_variables:
            refs += [s.original_variable_node_id, s.slot_variable_node_id]
        for r in refs:
            if not 0 <= r < n:
                raise CorruptCheckpointError(
                    f"{source}: {OBJECT_GRAPH_PROTO_KEY} node {i} refers to node {r}, but the graph has {n} nodes"
                )
    return graph


# -- the graph ---------------------------------------------------------------------------------


class ObjectGraph:
    """A decoded ``TrackableObjectGraph``: ``nodes[0]`` is the root.

    Object paths are written like checkpoint keys: escaped local names joined by ``/``
    (``model/dense1/_kernel``; the dict key ``a/b.c`` is written ``a.Sb..c``). A slot variable's
    path is its key prefix, ``net/w/.OPTIMIZER_SLOT/opt/m``.
    """

    def __init__(self, nodes: Sequence[TrackableObject]):
        self.nodes: tuple[TrackableObject, ...] = tuple(nodes)
        self._paths: dict[int, tuple[str, ...]] | None = None
        self._by_key_prefix: dict[str, int] | None = None

    # -- naming ----------------------------------------------------------------------------

    @property
    def paths(self) -> dict[int, tuple[str, ...]]:
        """Node id -> local names along the breadth-first path from the root (TF's key path).

        Only nodes reachable through ``children`` have one; slot variables do not."""
        if self._paths is None:
            paths: dict[int, tuple[str, ...]] = {0: ()} if self.nodes else {}
            queue = collections.deque([0] if self.nodes else [])
            while queue:
                nid = queue.popleft()
                for c in self.nodes[nid].children:
                    if c.node_id not in paths:
                        paths[c.node_id] = paths[nid] + (c.local_name,)
                        queue.append(c.node_id)
            self._paths = paths
        return self._paths

    def path_string(self, node_id: int) -> str:
        """The node's path as written in keys; a slot variable's is its key prefix."""
        path = self.paths.get(node_id)
        if path is not None:
            return object_path_to_string(path)
        for a in self.nodes[node_id].attributes:
            prefix, sep, _ = a.checkpoint_key.partition(f"/{OBJECT_ATTRIBUTES_NAME}/")
            if sep:
                return prefix
        return f"<node {node_id}>"

    def node_names(self) -> dict[int, str]:
        """TF's pretty names: ``(root).model.dense1`` and ``(root).opt's state 'm' for (root).net.w``."""
        names = {nid: ".".join(("(root)",) + p) for nid, p in self.paths.items()}
        for nid, node in enumerate(self.nodes):
            for s in node.slot_variables:
                names[s.slot_variable_node_id] = (
                    f"{names.get(nid, f'<node {nid}>')}'s state '{s.slot_name}' for "
                    f"{names.get(s.original_variable_node_id, f'<node {s.original_variable_node_id}>')}"
                )
        return names

    def slot_owners(self) -> dict[int, tuple[int, SlotVariableReference]]:
        """Slot node id -> (optimizer node id, reference)."""
        return {s.slot_variable_node_id: (nid, s) for nid, node in enumerate(self.nodes) for s in node.slot_variables}

    # -- lookup ----------------------------------------------------------------------------

    def find(self, path: str | Sequence[str]) -> int:
        """Node id of the object at ``path``: a key-style string (escaped names joined by ``/``,
        or a slot variable's key prefix) or a sequence of raw local names. Any path through the
        graph works, not only the breadth-first one. ``KeyError`` if there is none."""
        if isinstance(path, str):
            parts = [unescape_local_name(p) for p in path.split("/")] if path.strip("/") else []
            if parts and path.startswith("/"):
                parts = parts[1:]
        else:
            parts = list(path)
        nid = 0 if self.nodes else None
        for name in parts:
            if nid is None:
                break
            nid = self.nodes[nid].child(name)
        if nid is not None:
            return nid
        if isinstance(path, str):
            hit = self._key_prefixes().get(path.strip("/"))
            if hit is not None:
                return hit
        raise TensorNotFoundError(f"no object at path {path!r} in the checkpoint's object graph")

    def _key_prefixes(self) -> dict[str, int]:
        if self._by_key_prefix is None:
            out: dict[str, int] = {}
            for nid, node in enumerate(self.nodes):
                for a in node.attributes:
                    prefix, sep, _ = a.checkpoint_key.partition(f"/{OBJECT_ATTRIBUTES_NAME}/")
                    if sep:
                        out.setdefault(prefix, nid)
            self._by_key_prefix = out
        return self._by_key_prefix

    def checkpoint_key(self, path: str | Sequence[str], attribute: str = VARIABLE_VALUE_KEY) -> str:
        """The bundle key of ``attribute`` (default ``VARIABLE_VALUE``) of the object at ``path``,
        as stored in the graph (``KeyError`` if the object or the attribute is missing)."""
        nid = self.find(path)
        a = self.nodes[nid].attribute(attribute)
        if a is None:
            have = [x.name for x in self.nodes[nid].attributes]
            raise TensorNotFoundError(
                f"object {path!r} has no attribute {attribute!r} in the checkpoint (it has {have})"
            )
        return a.checkpoint_key

    def value_keys(self) -> dict[str, str]:
        """Every saved value: ``"<path>/<attribute>"`` -> bundle key, in node order."""
        out = {}
        for nid, node in enumerate(self.nodes):
            base = self.path_string(nid)
            for a in node.attributes:
                out[f"{base}/{a.name}" if base else a.name] = a.checkpoint_key
        return out

    # -- printing ----------------------------------------------------------------------------

    def format_tree(self, entries: Mapping[str, object] | None = None) -> str:
        """The graph as an indented tree from the root. A node reached a second time is shown as
        a reference to its first path; slot variables are listed under their optimizer.
        ``entries`` (a ``CheckpointIndex.entries``) adds each value's dtype and shape."""
        if not self.nodes:
            return "(empty object graph)"
        lines = ["(root)"]
        names = self.node_names()
        paths = self.paths
        printed: set[int] = {0}

        def describe(a: SerializedTensor) -> str:
            info = ""
            if entries is not None:
                e = entries.get(a.checkpoint_key)
                if e is None:
                    info = " (missing from the bundle)"
                else:
                    info = f" {e.dtype.name}{list(e.shape)}"
            return f"{a.name}{info} -> {a.checkpoint_key}"

        def walk_bfs(nid: int, prefix: str) -> None:
            node = self.nodes[nid]
            items: list[tuple[str, object]] = [("attr", a) for a in node.attributes]
            items += [("child", c) for c in node.children]
            items += [("slot", s) for s in node.slot_variables]
            for i, (kind, item) in enumerate(items):
                last = i == len(items) - 1
                branch, cont = ("└── ", "    ") if last else ("├── ", "│   ")
                if kind == "attr":
                    lines.append(f"{prefix}{branch}[{describe(item)}]")
                elif kind == "child":
                    cid = item.node_id
                    # a shared node is printed once, under the breadth-first path its keys use
                    mine = cid not in printed and nid in paths and paths.get(cid) == paths[nid] + (item.local_name,)
                    if not mine:
                        lines.append(
                            f"{prefix}{branch}{item.local_name}  (same object as {names.get(cid, f'<node {cid}>')})"
                        )
                        continue
                    printed.add(cid)
                    marker = "" if self.nodes[cid].has_values else "  (no values)"
                    lines.append(f"{prefix}{branch}{item.local_name}{marker}")
                    walk_bfs(cid, prefix + cont)
                else:
                    target = names.get(item.original_variable_node_id, f"<node {item.original_variable_node_id}>")
                    lines.append(f"{prefix}{branch}slot {item.slot_name!r} for {target}")
                    for a in self.nodes[item.slot_variable_node_id].attributes:
                        lines.append(f"{prefix}{cont}    [{describe(a)}]")

        walk_bfs(0, "")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_tree()

    def __repr__(self) -> str:
        n_values = sum(len(n.attributes) for n in self.nodes)
        return f"<ObjectGraph: {len(self.nodes)} nodes, {n_values} values>"

    def __len__(self) -> int:
        return len(self.nodes)

    # -- encoding (for tests and tools that build graphs without TF) --------------------------

    def to_bytes(self) -> bytes:
        """Serialize as TF's proto3 serializer would (fields in number order, defaults omitted)."""
        out = bytearray()
        for node in self.nodes:
            body = bytearray()
            for c in node.children:
                ref = (field(1, VARINT, c.node_id) if c.node_id else b"") + (
                    field(2, LENGTH, c.local_name.encode("utf-8", "surrogateescape")) if c.local_name else b""
                )
                body += field(1, LENGTH, ref)
            for a in node.attributes:
                t = b"".join(
                    field(i, LENGTH, s.encode("utf-8", "surrogateescape"))
                    for i, s in ((1, a.name), (2, a.full_name), (3, a.checkpoint_key))
                    if s
                )
                body += field(2, LENGTH, t)
            for s in node.slot_variables:
                t = (
                    (field(1, VARINT, s.original_variable_node_id) if s.original_variable_node_id else b"")
                    + (field(2, LENGTH, s.slot_name.encode()) if s.slot_name else b"")
                    + (field(3, VARINT, s.slot_variable_node_id) if s.slot_variable_node_id else b"")
                )
                body += field(3, LENGTH, t)
            if node.registered_saver is not None:
                r = node.registered_saver
                body += field(
                    4,
                    LENGTH,
                    (field(1, LENGTH, r.name.encode()) if r.name else b"")
                    + (field(2, LENGTH, r.object_name.encode()) if r.object_name else b""),
                )
            if node.has_checkpoint_values is not None:
                body += field(5, LENGTH, field(1, VARINT, 1) if node.has_checkpoint_values else b"")
            out += field(1, LENGTH, bytes(body))
        return bytes(out)
