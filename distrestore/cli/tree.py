"""Print a TF2 checkpoint's object tree, as distrestore.load_object_tree builds it.

Each line names how Python reaches an object from its parent: ".model", "._operations", "[1]"
for a list item, "['a.b']" for a name that is not an identifier. So the line
"│       └── [1]  ..." under ".model" and "._operations" is tree.model._operations[1] of
tree = distrestore.load_object_tree(CHECKPOINT), and load_object_tree(CHECKPOINT,
path=".model._operations[1]") restores only that subtree. A variable shows its dtype, shape and
the full name its graph records (Keras: "sequential/dense/kernel"); a node shows the name scope
all of its variables share (for Keras 3, the layer's name, which the checkpoint keeps nowhere
else). An object reached a second time refers to its first path. Values the tree cannot hold
are listed as "not restored".

A TF1 (name-based) checkpoint has no object graph: its tensors are shown by name scope instead.
"""

from __future__ import annotations

from . import common

HELP = "print the object tree of a TF2 checkpoint (names by scope for TF1)"


def add_arguments(parser) -> None:
    common.add_checkpoint(parser)
    common.add_limits(parser.add_argument_group("reading"))


def scope_tree(entries) -> str:
    """Tensor names split at "/" into an indented tree (TF1 checkpoints)."""
    lines = ["(no object graph: a name-based checkpoint; its tensors by name scope)"]
    shown: list[str] = []
    for name, entry in sorted(entries.items()):
        parts = name.split("/")
        same = 0
        while same < min(len(shown), len(parts) - 1) and shown[same] == parts[same]:
            same += 1
        for depth in range(same, len(parts) - 1):
            lines.append(f"{'  ' * depth}{parts[depth]}/")
        lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}  {entry.dtype.name}{list(entry.shape)}")
        shown = parts[:-1]
    return "\n".join(lines)


def run(args) -> int:
    from ..format.object_graph import OBJECT_GRAPH_PROTO_KEY
    from ..object_tree import format_object_tree
    from ..objects import read_object_graph

    limits = common.Limits(args)
    index = common.open_checkpoint(args, limits)
    if not index.has_tensor(OBJECT_GRAPH_PROTO_KEY):
        print(scope_tree(index.entries))
        return 0
    graph = read_object_graph(index, timeout=limits.timeout, deadline=limits.deadline())
    print(format_object_tree(graph, index.entries))
    return 0
