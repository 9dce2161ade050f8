"""Record what TensorFlow 2.21 (eager) does in each object-based restore scenario.

Each scenario is a list of steps in a small language that both TF (here) and distrestore
(``tests/test_checkpoint_objects.py``) interpret: build an object tree, ``restore``/``read`` a
checkpoint, attach objects later, create ``save_counter``, ``expect_partial``, and ``check``: run
the three status assertions (in the order nontrivial, existing, consumed) and digest every
variable reachable from the checkpoint object, slot variables included. ``end`` drops every
object and records which unused checkpoint values TF reports when its restores are collected.
Everything TF did is written, with the steps, to ``object_restore/expected.json``; the
checkpoints the scenarios read are written to ``object_restore/`` (or are committed fixtures
from ``tests/fixtures/tf/``).

Run (about 20 seconds)::

    TF_CPP_MIN_LOG_LEVEL=2 python tests/scenarios/gen_object_restore.py

Tree specs (JSON):
  {"node": {name: spec, ...}}         an AutoTrackable / dr.Node, children set in order
  {"list": [spec | null, ...]}        a list (children "0", "1", ...; null: a non-trackable item)
  {"dict": {key: spec}}               a dict (children named by key)
  {"var": {"shape", "dtype", "init"}} a variable; init is the flat C-order value list
  {"ref": [name, ...]}                the object already built at that path (depth-first first)
  {"optimizer": {name: spec}}         tf.compat.v1.train.AdamOptimizer / dr.Optimizer
  {"checkpoint": {name: spec}, "root": spec?}   tf.train.Checkpoint / dr.Checkpoint (the top)
A step's "tf_build" names a real TF/Keras object builder; its "tree" is that object's exported
structure and initial values, which distrestore builds instead.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import re
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
OUT = os.path.join(HERE, "object_restore")
sys.path.insert(0, os.path.join(TESTS, "fixtures"))
from digest import value_digest  # noqa: E402

# -- shared by both interpreters (no TF) --------------------------------------------------

ASSERTIONS = ("nontrivial", "existing", "consumed")
MESSAGE_CATEGORIES = [
    ("Unresolved object in checkpoint", "unresolved_object"),
    ("Unresolved slot restorations", "unresolved_slots"),
    ("Unused attributes", "unused_attributes"),
    ("Object ", "not_assigned"),
    ("Found ", "unbound_python_objects"),
    ("Nothing except the root object matched", "only_root_matched"),
    ("Nothing to load", "nothing_to_load"),
    ("No checkpoint specified", "no_checkpoint"),
]
UNUSED_NODE_RE = re.compile(r"Value in checkpoint could not be found in the restored object: (.*)$")
UNUSED_ATTR_RE = re.compile(
    r"An attribute in the restored object could not be found in the checkpoint\. Object: (.*), attribute: (.*)$"
)


ASSERTION_METHODS = {
    "nontrivial": "assert_nontrivial_match",
    "existing": "assert_existing_objects_matched",
    "consumed": "assert_consumed",
}


def parse_unused(lines) -> dict:
    """The unused checkpoint values named in TF's log lines (or distrestore's warning text)."""
    nodes, attrs = [], []
    for line in lines:
        m = UNUSED_NODE_RE.search(line)
        if m:
            nodes.append(m.group(1))
        m = UNUSED_ATTR_RE.search(line)
        if m:
            attrs.append([m.group(1), m.group(2)])
    return {"nodes": sorted(nodes), "attributes": sorted(attrs)}


def categorize(message: str) -> str:
    for prefix, name in MESSAGE_CATEGORIES:
        if message.startswith(prefix):
            return name
    return "other: " + message[:80]


def escape(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


def initial_value(spec: dict) -> np.ndarray:
    shape = tuple(spec["shape"])
    if spec["dtype"] == "string":
        return np.array([s.encode() for s in spec["init"]], dtype=object).reshape(shape)
    return np.array(spec["init"], dtype=spec["dtype"]).reshape(shape)


def pattern(shape, dtype="float32", offset=100.0) -> dict:
    """A variable spec whose initial value no checkpoint holds."""
    n = int(np.prod(shape)) if shape else 1
    if dtype == "string":
        return {"var": {"shape": list(shape), "dtype": dtype, "init": [f"init{i}" for i in range(n)]}}
    vals = (np.arange(n) % 7 + 1) * 0.25 + offset
    if np.dtype(dtype).kind in "iu":
        vals = np.arange(n) + int(offset)
    return {"var": {"shape": list(shape), "dtype": dtype, "init": np.asarray(vals).astype(dtype).tolist()}}


def walk_values(top, children_of, is_variable, value_of, slots_of) -> dict:
    """Digest every variable reachable from ``top``: ``{path: digest}``; a variable reached by
    several paths is listed under each. Slot paths: ``<var>/.OPTIMIZER_SLOT/<opt>/<slot>``."""
    out = {}
    first_path = {id(top): ""}
    queue = collections.deque([(top, "")])
    objects = []
    while queue:
        obj, path = queue.popleft()
        objects.append((obj, path))
        for name, child in children_of(obj):
            cpath = f"{path}/{escape(name)}" if path else escape(name)
            if is_variable(child):
                out[cpath] = value_digest(value_of(child))
                first_path.setdefault(id(child), cpath)
            elif id(child) not in first_path:
                first_path[id(child)] = cpath
                queue.append((child, cpath))
    for obj, path in objects:
        for var, slot_name, slot in slots_of(obj):
            vpath = first_path.get(id(var))
            if vpath is not None:
                out[f"{vpath}/.OPTIMIZER_SLOT/{path}/{escape(slot_name)}"] = value_digest(value_of(slot))
    return dict(sorted(out.items()))


# -- checkpoints written for the scenarios ---------------------------------------------------


def _values(rng, shape, dtype="float32"):
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-50, 50, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def write_checkpoints(tf) -> None:
    from tensorflow.python.trackable.autotrackable import AutoTrackable

    def dense(rng, n_in, n_out):
        d = AutoTrackable()
        d._kernel = tf.Variable(_values(rng, (n_in, n_out)))
        d.bias = tf.Variable(_values(rng, (n_out,)))
        return d

    def model(rng, with_dense2=True):
        m = AutoTrackable()
        m.dense1 = dense(rng, 1, 4)
        if with_dense2:
            m.dense2 = dense(rng, 4, 5)
            w = AutoTrackable()
            w.w = tf.Variable(_values(rng, (2, 2)))
            m.layers = [tf.Variable(_values(rng, (2,))), w]
            m.table = {"a/b.c": tf.Variable(_values(rng, (3,))), "x": tf.Variable(_values(rng, (2,), "int32"))}
        return m

    # two saves of the same structure with different values (save(): save_counter, state file)
    d = os.path.join(OUT, "two_dense")
    os.makedirs(d)
    rng = np.random.default_rng(11)
    m = model(rng)
    step = tf.Variable(np.int64(7))
    ckpt = tf.train.Checkpoint(model=m, step=step)
    ckpt.save(os.path.join(d, "ckpt"))
    for v in tf.nest.flatten(
        [
            m.dense1._kernel,
            m.dense1.bias,
            m.dense2._kernel,
            m.dense2.bias,
            m.layers[0],
            m.layers[1].w,
            m.table["a/b.c"],
            m.table["x"],
        ]
    ):
        v.assign(_values(rng, v.shape, v.dtype.name))
    step.assign(8)
    ckpt.save(os.path.join(d, "ckpt"))
    # write(): no save_counter, no dense2 and no containers, other values
    tf.train.Checkpoint(model=model(np.random.default_rng(12), with_dense2=False), step=tf.Variable(np.int64(9))).write(
        os.path.join(d, "partial")
    )
    # a checkpoint whose root is the model itself (what save_weights-style writers produce)
    rng = np.random.default_rng(13)
    net = AutoTrackable()
    net.dense = dense(rng, 2, 3)
    net.head = [tf.Variable(_values(rng, (3,)))]
    tf.train.Checkpoint(root=net).write(os.path.join(d, "root_weights"))


# -- scenarios ---------------------------------------------------------------------------------


def V(shape, dtype="float32", offset=100.0):
    return pattern(shape, dtype, offset)


def N(**children):
    return {"node": children}


def dense_spec(n_in, n_out, offset=100.0):
    return N(_kernel=V([n_in, n_out], offset=offset), bias=V([n_out], offset=offset + 1))


TWO = "scenarios/object_restore/two_dense/ckpt-2"
ONE = "scenarios/object_restore/two_dense/ckpt-1"
PARTIAL = "scenarios/object_restore/two_dense/partial"
ROOT_WEIGHTS = "scenarios/object_restore/two_dense/root_weights"
KERAS = "fixtures/tf/tf2_keras/ckpt-1"
KERAS_MODEL_ONLY = "fixtures/tf/tf2_keras/model_only"
TF1_ADAM = "fixtures/tf/tf1_adam/ckpt-1"
SAVED_MODEL = "fixtures/tf/saved_model"
SAVED_MODEL_VARS = "fixtures/tf/saved_model/variables/variables"

CHECK = {"op": "check", "status": "s"}


def full_model(offset=100.0):
    return N(
        dense1=dense_spec(1, 4, offset),
        dense2=dense_spec(4, 5, offset + 10),
        layers={"list": [V([2], offset=offset + 20), N(w=V([2, 2], offset=offset + 30))]},
        table={"dict": {"a/b.c": V([3], offset=offset + 40), "x": V([2], "int32", offset + 50)}},
    )


SCENARIOS = [
    {
        "name": "keras_whole_model",
        "doc": "Keras 3 Sequential + built Adam restored from a model+optimizer checkpoint; layer "
        "weights are first reached through optimizer/_trainable_variables/N.",
        "steps": [
            {"op": "build", "tf_build": "keras_model_and_adam"},
            {"op": "restore", "path": KERAS, "as": "s"},
            CHECK,
        ],
    },
    {
        "name": "keras_model_without_optimizer",
        "doc": "Only the model, from the same model+optimizer checkpoint: the optimizer is deferred.",
        "steps": [{"op": "build", "tf_build": "keras_model"}, {"op": "restore", "path": KERAS, "as": "s"}, CHECK],
    },
    {
        "name": "keras_model_only_checkpoint",
        "doc": "The model's own checkpoint (written by write()), read() and restore().",
        "steps": [
            {"op": "build", "tf_build": "keras_model"},
            {"op": "read", "path": KERAS_MODEL_ONLY, "as": "s"},
            CHECK,
            {"op": "restore", "path": KERAS_MODEL_ONLY, "as": "s2"},
            {"op": "check", "status": "s2"},
        ],
    },
    {
        "name": "fake_structure_keras_bias",
        "doc": "TF guide: a fake structure that reaches only the first Dense layer's bias.",
        "steps": [
            {
                "op": "build",
                "tree": {"checkpoint": {"model": N(_functional=N(_operations=N(**{"1": N(bias=V([8]))})))}},
            },
            {"op": "restore", "path": KERAS, "as": "s"},
            CHECK,
            {"op": "expect_partial", "status": "s"},
            {"op": "end"},
        ],
    },
    {
        "name": "fake_structure_bias",
        "doc": "A fake structure for one bias of a checkpoint written here.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(dense1=N(bias=V([4])))}}},
            {"op": "restore", "path": TWO, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "deferred_two_levels",
        "doc": "Restore before the objects exist, then attach a node, its variables, whole "
        "subtrees, list items and dict items.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(), "step": V([], "int64")}}},
            {"op": "restore", "path": TWO, "as": "s"},
            CHECK,
            {"op": "attach", "parent": ["model"], "name": "dense2", "tree": N()},
            CHECK,
            {"op": "attach", "parent": ["model", "dense2"], "name": "bias", "tree": V([5])},
            CHECK,
            {"op": "attach", "parent": ["model", "dense2"], "name": "_kernel", "tree": V([4, 5])},
            {"op": "attach", "parent": ["model"], "name": "dense1", "tree": dense_spec(1, 4)},
            CHECK,
            {"op": "attach", "parent": ["model"], "name": "layers", "tree": {"list": [V([2])]}},
            CHECK,
            {"op": "append", "parent": ["model", "layers"], "tree": N(w=V([2, 2]))},
            CHECK,
            {"op": "attach", "parent": ["model"], "name": "table", "tree": {"dict": {}}},
            {"op": "attach", "parent": ["model", "table"], "name": "a/b.c", "tree": V([3])},
            CHECK,
            {"op": "attach", "parent": ["model", "table"], "name": "x", "tree": V([2], "int32")},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "deferred_newest_restore_wins",
        "doc": "Two pending restores of the same object: the newer restore call wins, whichever checkpoint is older.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(), "step": V([], "int64")}}},
            {"op": "restore", "path": TWO, "as": "s"},
            {"op": "restore", "path": ONE, "as": "s1"},
            {"op": "attach", "parent": ["model"], "name": "dense1", "tree": dense_spec(1, 4)},
            CHECK,
            {"op": "check", "status": "s1"},
            {"op": "restore", "path": TWO, "as": "s2"},
            {"op": "attach", "parent": ["model"], "name": "dense2", "tree": dense_spec(4, 5)},
            CHECK,
            {"op": "check", "status": "s1"},
            {"op": "check", "status": "s2"},
            {"op": "expect_partial", "status": "s"},
            {"op": "expect_partial", "status": "s1"},
            {"op": "expect_partial", "status": "s2"},
            {"op": "end"},
        ],
    },
    {
        "name": "deferred_older_restore_fills_gaps",
        "doc": "The newer restore lacks dense2, so attaching dense2 takes the older restore's value.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(), "step": V([], "int64")}}},
            {"op": "restore", "path": ONE, "as": "s1"},
            {"op": "read", "path": PARTIAL, "as": "s"},
            {"op": "attach", "parent": ["model"], "name": "dense1", "tree": dense_spec(1, 4)},
            {"op": "attach", "parent": ["model"], "name": "dense2", "tree": dense_spec(4, 5)},
            CHECK,
            {"op": "check", "status": "s1"},
            {"op": "end"},
        ],
    },
    {
        "name": "new_variable_absent_from_checkpoint",
        "doc": "A variable the checkpoint does not have.",
        "steps": [
            {
                "op": "build",
                "tree": {"checkpoint": {"model": N(dense1=dense_spec(1, 4), extra=V([3])), "step": V([], "int64")}},
            },
            {"op": "restore", "path": TWO, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "whole_tree_consumed",
        "doc": "Every object exists before restore().",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": full_model(), "step": V([], "int64")}}},
            {"op": "restore", "path": TWO, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "saved_model_restore",
        "doc": "restore() of a SavedModel directory: variables consumed, save_counter is not.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"w": V([3, 2]), "n": V([], "int64"), "label": V([], "string")}}},
            {"op": "restore", "path": SAVED_MODEL, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "saved_model_read",
        "doc": "read() of a SavedModel's variables/variables prefix: fully consumed.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"w": V([3, 2]), "n": V([], "int64"), "label": V([], "string")}}},
            {"op": "read", "path": SAVED_MODEL_VARS, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "tf1_adam_slots",
        "doc": "compat.v1 Adam: slot variables are created and restored when the variable and the "
        "optimizer both exist; non-slot variables are attached later.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"net": N(w=V([3, 2]), b=V([2])), "opt": {"optimizer": {}}}}},
            {"op": "restore", "path": TF1_ADAM, "as": "s"},
            CHECK,
            {"op": "attach", "parent": ["opt"], "name": "beta1_power", "tree": V([])},
            CHECK,
            {"op": "attach", "parent": ["opt"], "name": "beta2_power", "tree": V([])},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "tf1_adam_variables_later",
        "doc": "compat.v1 Adam: the variables are attached after restore(); their slots follow.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"net": N(), "opt": {"optimizer": {}}}}},
            {"op": "restore", "path": TF1_ADAM, "as": "s"},
            CHECK,
            {"op": "attach", "parent": ["net"], "name": "w", "tree": V([3, 2])},
            CHECK,
            {"op": "attach", "parent": ["net"], "name": "b", "tree": V([2])},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "tf1_adam_optimizer_later",
        "doc": "compat.v1 Adam: the optimizer is attached after restore(); parked slot restores run.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"net": N(w=V([3, 2]), b=V([2]))}}},
            {"op": "restore", "path": TF1_ADAM, "as": "s"},
            CHECK,
            {"op": "attach", "parent": [], "name": "opt", "tree": {"optimizer": {}}},
            CHECK,
            {"op": "expect_partial", "status": "s"},
            {"op": "end"},
        ],
    },
    {
        "name": "tf1_adam_without_optimizer",
        "doc": "compat.v1 Adam checkpoint into variables only.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"net": N(w=V([3, 2]), b=V([2]))}}},
            {"op": "restore", "path": TF1_ADAM, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "restore_of_write_checkpoint",
        "doc": "restore() of a write() checkpoint: save_counter has no value.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(dense1=dense_spec(1, 4)), "step": V([], "int64")}}},
            {"op": "restore", "path": PARTIAL, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "read_of_write_checkpoint",
        "doc": "read() of a write() checkpoint: consumed.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(dense1=dense_spec(1, 4)), "step": V([], "int64")}}},
            {"op": "read", "path": PARTIAL, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "read_of_save_checkpoint",
        "doc": "read() of a save() checkpoint: save_counter pending until it is created.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": full_model(), "step": V([], "int64")}}},
            {"op": "read", "path": TWO, "as": "s"},
            CHECK,
            {"op": "save_counter"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "root_node_read",
        "doc": "Checkpoint(root=node).read() of a checkpoint whose root is the model.",
        "steps": [
            {
                "op": "build",
                "tree": {"checkpoint": {}, "root": N(dense=N(_kernel=V([2, 3]), bias=V([3])), head={"list": [V([3])]})},
            },
            {"op": "read", "path": ROOT_WEIGHTS, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "root_node_restore",
        "doc": "Checkpoint(root=node).restore(): the save_counter is attached and has no value.",
        "steps": [
            {
                "op": "build",
                "tree": {"checkpoint": {}, "root": N(dense=N(_kernel=V([2, 3]), bias=V([3])), head={"list": [V([3])]})},
            },
            {"op": "restore", "path": ROOT_WEIGHTS, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "root_node_attached_dependency",
        "doc": "Checkpoint(root=node, head=[...]): head is not a child of node but is restored from "
        "the checkpoint root's child of that name.",
        "steps": [
            {
                "op": "build",
                "tree": {
                    "checkpoint": {"head": {"list": [V([3])]}},
                    "root": N(dense=N(_kernel=V([2, 3]), bias=V([3]))),
                },
            },
            {"op": "read", "path": ROOT_WEIGHTS, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "nothing_matches",
        "doc": "Objects that share no names with the checkpoint.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"other": N(v=V([2]))}}},
            {"op": "read", "path": TWO, "as": "s"},
            CHECK,
            {"op": "expect_partial", "status": "s"},
            {"op": "end"},
        ],
    },
    {
        "name": "nothing_to_load",
        "doc": "An empty Checkpoint.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {}}},
            {"op": "read", "path": TWO, "as": "s"},
            CHECK,
            {"op": "expect_partial", "status": "s"},
            {"op": "end"},
        ],
    },
    {
        "name": "node_where_checkpoint_has_variable",
        "doc": "A node bound to a checkpoint variable: its value is an unused attribute.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(dense1=N(bias=N()))}}},
            {"op": "read", "path": PARTIAL, "as": "s"},
            CHECK,
            {"op": "end"},
        ],
    },
    {
        "name": "restore_none",
        "doc": "restore(None): every assertion fails.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"v": V([2])}}},
            {"op": "restore", "path": None, "as": "s"},
            CHECK,
        ],
    },
    {
        "name": "shape_mismatch",
        "doc": "A variable whose shape differs from the checkpoint's: restore raises.",
        "steps": [
            {
                "op": "build",
                "tree": {"checkpoint": {"model": N(dense1=N(_kernel=V([1, 4]), bias=V([7]))), "step": V([], "int64")}},
            },
            {"op": "restore", "path": TWO, "as": "s", "expect_error": True},
        ],
    },
    {
        "name": "dtype_mismatch",
        "doc": "A variable whose dtype differs from the checkpoint's: restore raises.",
        "steps": [
            {"op": "build", "tree": {"checkpoint": {"model": N(dense1=dense_spec(1, 4)), "step": V([], "float32")}}},
            {"op": "restore", "path": TWO, "as": "s", "expect_error": True},
        ],
    },
]


# -- the TF interpreter ----------------------------------------------------------------------


class TFWorld:
    """Runs steps against real TF objects."""

    def __init__(self, tf):
        self.tf = tf
        from tensorflow.python.trackable import base
        from tensorflow.python.trackable.autotrackable import AutoTrackable

        self.base = base
        self.AutoTrackable = AutoTrackable
        self.top = None
        self.statuses = {}
        self.built = {}

    # structure
    def children(self, obj):
        if not hasattr(obj, "_trackable_children"):
            return []
        children = obj._trackable_children(save_type=self.base.SaveType.CHECKPOINT)
        if isinstance(obj, self.tf.train.Checkpoint):
            # Checkpoint(root=x) also tracks x as "_root" on itself (a private reference TF
            # keeps for async checkpointing); name it by "root" only, as distrestore does
            children = {k: v for k, v in children.items() if k != "_root"}
        return list(children.items())

    def is_variable(self, obj):
        return hasattr(obj, "assign") and hasattr(obj, "numpy") and hasattr(obj, "shape")

    def value(self, var):
        v = var.numpy()
        if isinstance(v, bytes):
            return np.array(v, dtype=object)
        return np.asarray(v)

    def slots(self, obj):
        tf = self.tf
        if not isinstance(obj, tf.compat.v1.train.Optimizer):
            return []
        out = []
        for var in self._all_variables():
            for name in obj.get_slot_names():
                s = obj.get_slot(var, name)
                if s is not None:
                    out.append((var, name, s))
        return out

    def _all_variables(self):
        seen, out = set(), []
        queue = collections.deque([self.top])
        while queue:
            o = queue.popleft()
            if id(o) in seen:
                continue
            seen.add(id(o))
            if self.is_variable(o):
                out.append(o)
            queue.extend(c for _, c in self.children(o))
        return out

    def values(self) -> dict:
        return walk_values(self.top, self.children, self.is_variable, self.value, self.slots)

    def lookup(self, path):
        obj = self.top
        for name in path:
            obj = dict(self.children(obj))[name]
        return obj

    # building
    def build(self, spec, path=()):
        tf = self.tf
        kind = next(k for k in spec if k != "root")
        if kind == "ref":
            return self.built[tuple(spec["ref"])]
        if kind == "var":
            obj = tf.Variable(initial_value(spec["var"]))
        elif kind == "node":
            obj = self.AutoTrackable()
            self.built[tuple(path)] = obj
            for name, child in spec["node"].items():
                setattr(obj, name, self.build(child, path + (name,)))
            return obj
        elif kind == "list":
            obj = [None if c is None else self.build(c, path + (str(i),)) for i, c in enumerate(spec["list"])]
        elif kind == "dict":
            obj = {k: self.build(c, path + (k,)) for k, c in spec["dict"].items()}
        elif kind == "optimizer":
            obj = tf.compat.v1.train.AdamOptimizer(0.1)
        elif kind == "checkpoint":
            kwargs = {k: self.build(c, path + (k,)) for k, c in spec["checkpoint"].items()}
            if "root" in spec:
                kwargs["root"] = self.build(spec["root"], path + ("root",))
            obj = tf.train.Checkpoint(**kwargs)
        else:
            raise ValueError(kind)
        self.built[tuple(path)] = obj
        return obj

    def attach(self, parent, name, value):
        tf = self.tf
        if isinstance(parent, tf.compat.v1.train.Optimizer):
            anchor = next(v for v in self._all_variables() if v.dtype == tf.float32)
            parent._create_non_slot_variable(initial_value=value.numpy(), name=name, colocate_with=anchor)
        elif isinstance(parent, dict) or type(parent).__name__ == "_DictWrapper":
            parent[name] = value
        else:
            setattr(parent, name, value)


def export_tree(tf, top) -> dict:
    """A tree spec of live TF objects (depth-first; shared objects become refs)."""
    from tensorflow.python.trackable import base

    first: dict[int, list] = {}

    def spec(obj, path):
        if id(obj) in first:
            return {"ref": first[id(obj)]}
        first[id(obj)] = list(path)
        if hasattr(obj, "assign") and hasattr(obj, "numpy"):
            v = np.asarray(obj.numpy())
            dtype = tf.as_dtype(obj.dtype).name
            return {"var": {"shape": list(v.shape), "dtype": dtype, "init": v.reshape(-1).tolist()}}
        children = obj._trackable_children(save_type=base.SaveType.CHECKPOINT)
        tname = type(obj).__name__
        if tname in ("ListWrapper", "_TupleWrapper"):
            items = [None] * len(obj)
            for name, child in children.items():
                items[int(name)] = spec(child, path + [name])
            return {"list": items}
        if tname == "_DictWrapper":
            return {"dict": {k: spec(c, path + [k]) for k, c in children.items()}}
        if tname == "Checkpoint":
            return {"checkpoint": {k: spec(c, path + [k]) for k, c in children.items()}}
        return {"node": {k: spec(c, path + [k]) for k, c in children.items()}}

    return spec(top, [])


def tf_builders(tf):
    def keras_model():
        keras = tf.keras
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        rng = np.random.default_rng(99)
        model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
        return model

    def model_only():
        return tf.train.Checkpoint(model=keras_model())

    def model_and_adam():
        model = keras_model()
        opt = tf.keras.optimizers.Adam(learning_rate=0.5)
        opt.build(model.trainable_variables)
        return tf.train.Checkpoint(model=model, optimizer=opt)

    return {"keras_model": model_only, "keras_model_and_adam": model_and_adam}


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.extend(record.getMessage().splitlines())


def _do_step(tf, world: TFWorld, builders, capture, scenario, step: dict) -> None:
    """One step; a function of its own so that no local keeps an object alive after it."""
    op = step["op"]
    if op == "build":
        if "tf_build" in step:
            world.top = builders[step["tf_build"]]()
            step["tree"] = export_tree(tf, world.top)
        else:
            world.top = world.build(step["tree"])
    elif op in ("restore", "read"):
        path = None if step["path"] is None else os.path.join(TESTS, step["path"])
        before = world.values()
        try:
            world.statuses[step["as"]] = getattr(world.top, op)(path)
        except Exception as e:
            if not step.get("expect_error"):
                raise
            after = world.values()
            step["tf_error"] = {
                "type": type(e).__name__,
                "message": str(e)[:300],
                "is_value_error": isinstance(e, ValueError),
                "values_changed": sorted(k for k in after if before.get(k) != after[k]),
            }
        else:
            if step.get("expect_error"):
                raise AssertionError(f"{scenario['name']}: TF did not raise")
    elif op in ("attach", "append"):
        parent = world.lookup(step["parent"])
        value = world.build(step["tree"], tuple(step["parent"]) + (step.get("name", "?"),))
        if op == "append":
            parent.append(value)
        else:
            world.attach(parent, step["name"], value)
    elif op == "save_counter":
        world.top.save_counter  # noqa: B018 - creating it is the point
    elif op == "expect_partial":
        world.statuses[step["status"]].expect_partial()
    elif op == "check":
        status = world.statuses[step["status"]]
        result = {}
        for name in ASSERTIONS:
            try:
                getattr(status, ASSERTION_METHODS[name])()
                result[name] = None
            except AssertionError as e:
                result[name] = categorize(str(e))
        step["assertions"] = result
        step["values"] = world.values()
    elif op == "end":
        capture.lines.clear()
        world.statuses.clear()
        world.top = None
        world.built.clear()
        gc.collect()
        gc.collect()
        step["unused_values"] = parse_unused(capture.lines)
    else:
        raise ValueError(op)


def run_tf(tf, scenario) -> list:
    """Run one scenario's steps in TF; return the step list with results filled in."""
    world = TFWorld(tf)
    builders = tf_builders(tf)
    steps = []
    capture = _LogCapture()
    logger = logging.getLogger("tensorflow")
    saved_handlers, saved_propagate = list(logger.handlers), logger.propagate
    for h in saved_handlers:
        logger.removeHandler(h)
    logger.addHandler(capture)
    logger.propagate = False
    try:
        for step in scenario["steps"]:
            step = dict(step)
            _do_step(tf, world, builders, capture, scenario, step)
            steps.append(step)
    finally:
        logger.removeHandler(capture)
        for h in saved_handlers:
            logger.addHandler(h)
        logger.propagate = saved_propagate
    return steps


def main() -> None:
    import tensorflow as tf

    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    write_checkpoints(tf)
    out = {"tf_version": tf.__version__, "scenarios": []}
    for scenario in SCENARIOS:
        steps = run_tf(tf, scenario)
        out["scenarios"].append({"name": scenario["name"], "doc": scenario["doc"], "steps": steps})
        checks = [s for s in steps if s["op"] == "check"]
        print(
            f"{scenario['name']}: "
            + "; ".join(",".join(f"{k}={v}" for k, v in c["assertions"].items() if v) or "all pass" for c in checks)
        )
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
