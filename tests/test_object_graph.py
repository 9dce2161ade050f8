"""The ``_CHECKPOINTABLE_OBJECT_GRAPH`` decoder (``distrestore.format.object_graph``).

Graphs are built in memory where the point is the decoder itself, and read from the committed TF
fixtures (through the engine) where the point is TF's real output; where TF is installed the
decoded graphs are compared field by field with TF's own protobuf parser.
"""

from __future__ import annotations

import os

import pytest

from distrestore.errors import CorruptCheckpointError
from distrestore.format.object_graph import (
    ObjectGraph,
    ObjectReference,
    RegisteredSaver,
    SerializedTensor,
    SlotVariableReference,
    TrackableObject,
    checkpoint_key,
    escape_local_name,
    object_path_to_string,
    parse_object_graph,
    unescape_local_name,
)
from distrestore.format.wire import LENGTH, VARINT, field

TESTS = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(TESTS, "fixtures", "tf")
TF1_ADAM = os.path.join(FIXTURES, "tf1_adam", "ckpt-1")
KERAS = os.path.join(FIXTURES, "tf2_keras", "ckpt-1")
KERAS_MODEL_ONLY = os.path.join(FIXTURES, "tf2_keras", "model_only")
SAVED_MODEL = os.path.join(FIXTURES, "saved_model", "variables", "variables")
SCENARIO_CKPTS = [
    os.path.join(TESTS, "scenarios", "object_restore", "two_dense", n)
    for n in ("ckpt-1", "ckpt-2", "partial", "root_weights")
]


def raw_graph(prefix: str) -> bytes:
    from distrestore.index import open_checkpoint
    from distrestore.restore import TensorRequest, fetch

    value = fetch([TensorRequest(open_checkpoint(prefix), "_CHECKPOINTABLE_OBJECT_GRAPH")])[0]
    assert value.shape == () and value.dtype == object
    return value[()]


def var(key: str, full_name: str = "") -> TrackableObject:
    return TrackableObject(attributes=(SerializedTensor("VARIABLE_VALUE", full_name, key),), has_checkpoint_values=True)


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, escaped",
    [
        ("a/b.c", "a.Sb..c"),
        ("plain", "plain"),
        ("..", "...."),
        ("/", ".S"),
        ("a.S", "a..S"),
        (".ATTRIBUTES", "..ATTRIBUTES"),
        ("", ""),
    ],
)
def test_escape_local_name(raw, escaped):
    assert escape_local_name(raw) == escaped
    assert unescape_local_name(escaped) == raw


def test_keys_from_paths():
    assert object_path_to_string(["model", "table", "a/b.c"]) == "model/table/a.Sb..c"
    assert checkpoint_key(["model", "dense_w"]) == "model/dense_w/.ATTRIBUTES/VARIABLE_VALUE"
    assert checkpoint_key(["it"], "ITERATOR_STATE") == "it/.ATTRIBUTES/ITERATOR_STATE"


# -- decoding real TF output --------------------------------------------------------------------


def test_tf1_adam_graph():
    data = raw_graph(TF1_ADAM)
    g = parse_object_graph(data)
    assert len(g) == 12
    root = g.nodes[0]
    assert [(c.node_id, c.local_name) for c in root.children] == [(1, "net"), (2, "opt"), (3, "save_counter")]
    assert g.nodes[2].slot_variables[0] == SlotVariableReference(4, "m", 8)
    assert g.nodes[8].attributes[0] == SerializedTensor(
        "VARIABLE_VALUE", "w/Adam", "net/w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert all(n.has_checkpoint_values is True for n in g.nodes)
    assert g.paths[4] == ("net", "w") and 8 not in g.paths  # slots: no children path
    assert g.path_string(8) == "net/w/.OPTIMIZER_SLOT/opt/m"
    names = g.node_names()
    assert names[6] == "(root).opt.beta1_power"
    assert names[8] == "(root).opt's state 'm' for (root).net.w"
    assert g.slot_owners()[11] == (2, SlotVariableReference(5, "v", 11))
    # TF's serializer output is reproduced byte for byte
    assert g.to_bytes() == data


def test_lookup_by_path():
    g = parse_object_graph(raw_graph(TF1_ADAM))
    assert g.find("net/w") == 4 and g.find(["net", "w"]) == 4 and g.find("") == 0
    assert g.checkpoint_key("net/w") == "net/w/.ATTRIBUTES/VARIABLE_VALUE"
    assert g.checkpoint_key("net/w/.OPTIMIZER_SLOT/opt/m") == "net/w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"
    with pytest.raises(KeyError, match="no object at path"):
        g.find("net/nope")
    with pytest.raises(KeyError, match="no attribute 'OTHER'"):
        g.checkpoint_key("net/w", "OTHER")
    assert g.value_keys()["net/b/VARIABLE_VALUE"] == "net/b/.ATTRIBUTES/VARIABLE_VALUE"


def test_keras_graph_is_a_dag_and_any_path_finds_a_shared_node():
    g = parse_object_graph(raw_graph(KERAS))
    # the layer kernel is keyed by its breadth-first path, through the optimizer
    assert (
        g.checkpoint_key("model/_functional/_operations/1/_kernel")
        == "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert g.find("optimizer/_variables/0") == g.find("optimizer/_iterations")
    assert g.nodes[g.find("model/_functional/_tracked")].has_checkpoint_values is False
    text = g.format_tree()
    assert "│           │   ├── _kernel  (same object as (root).optimizer._trainable_variables.0)" in text
    assert "_tracked  (no values)" in text
    # each value is printed once
    assert text.count("-> optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE") == 1


def test_keras_model_only_paths():
    g = parse_object_graph(raw_graph(KERAS_MODEL_ONLY))
    assert (
        g.checkpoint_key("model/_functional/_operations/2/bias")
        == "model/_functional/_operations/2/bias/.ATTRIBUTES/VARIABLE_VALUE"
    )


def test_escaped_dict_key_lookup():
    g = parse_object_graph(raw_graph(SCENARIO_CKPTS[1]))
    assert g.checkpoint_key("model/table/a.Sb..c") == "model/table/a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"
    assert g.checkpoint_key(["model", "table", "a/b.c"]) == "model/table/a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"
    assert g.node_names()[g.find(["model", "table", "a/b.c"])] == "(root).model.table.a/b.c"


def test_format_tree_with_index_entries():
    from distrestore.index import open_checkpoint

    g = parse_object_graph(raw_graph(TF1_ADAM))
    text = g.format_tree(open_checkpoint(TF1_ADAM).entries)
    lines = text.splitlines()
    assert lines[0] == "(root)"
    assert "│   │   └── [VARIABLE_VALUE float32[3, 2] -> net/w/.ATTRIBUTES/VARIABLE_VALUE]" in lines
    assert "│   ├── slot 'm' for (root).net.w" in lines
    assert "    └── [VARIABLE_VALUE int64[] -> save_counter/.ATTRIBUTES/VARIABLE_VALUE]" in lines
    assert str(g) == g.format_tree()
    assert repr(g) == "<ObjectGraph: 12 nodes, 9 values>"


# -- decoding edge cases (graphs built in memory) -------------------------------------------------


def sample_graph() -> ObjectGraph:
    return ObjectGraph(
        [
            TrackableObject(children=(ObjectReference(1, "d"), ObjectReference(2, "x")), has_checkpoint_values=True),
            TrackableObject(children=(ObjectReference(3, "a/b.c"),), has_checkpoint_values=True),
            var("x/.ATTRIBUTES/VARIABLE_VALUE", "x"),
            var("d/a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"),
        ]
    )


def test_round_trip_in_memory():
    g = sample_graph()
    back = parse_object_graph(g.to_bytes())
    assert back.nodes == g.nodes
    assert back.find("d/a.Sb..c") == 3 and back.find(["d", "a/b.c"]) == 3


def test_unknown_fields_are_skipped():
    tensor = (
        field(1, LENGTH, b"VARIABLE_VALUE")
        + field(3, LENGTH, b"k/.ATTRIBUTES/VARIABLE_VALUE")
        + field(4, VARINT, 1)  # optional_restore, in older protos
        + field(9, LENGTH, b"future")
    )
    node = field(2, LENGTH, tensor) + field(7, VARINT, 3) + field(6, LENGTH, b"\x08\x01")
    root = field(1, LENGTH, field(1, VARINT, 1) + field(2, LENGTH, b"k"))
    data = field(1, LENGTH, root) + field(1, LENGTH, node) + field(2, VARINT, 5)
    g = parse_object_graph(data)
    assert g.nodes[1].attributes == (SerializedTensor("VARIABLE_VALUE", "", "k/.ATTRIBUTES/VARIABLE_VALUE"),)
    assert g.checkpoint_key("k") == "k/.ATTRIBUTES/VARIABLE_VALUE"


def test_has_values_without_the_field():
    # older writers leave has_checkpoint_values unset: TF then looks at the node's contents
    assert TrackableObject().has_values is False
    assert TrackableObject(children=(ObjectReference(1, "a"),)).has_values is True
    assert TrackableObject(registered_saver=RegisteredSaver("s", "o")).has_values is True
    assert TrackableObject(children=(ObjectReference(1, "a"),), has_checkpoint_values=False).has_values is False
    # an explicitly false BoolValue is an empty message
    g = parse_object_graph(field(1, LENGTH, field(5, LENGTH, b"")))
    assert g.nodes[0].has_checkpoint_values is False


def test_simple_variable():
    assert var("k/.ATTRIBUTES/VARIABLE_VALUE").is_simple_variable
    assert not TrackableObject(attributes=(SerializedTensor("OTHER", "", "k"),)).is_simple_variable


def test_corrupt_graphs_are_refused():
    data = sample_graph().to_bytes()
    with pytest.raises(CorruptCheckpointError, match="_CHECKPOINTABLE_OBJECT_GRAPH"):
        parse_object_graph(data[:-3], source="ckpt")
    bad = field(1, LENGTH, field(1, LENGTH, field(1, VARINT, 5) + field(2, LENGTH, b"a")))
    with pytest.raises(CorruptCheckpointError, match="refers to node 5"):
        parse_object_graph(bad)


def test_empty_graph():
    g = parse_object_graph(b"")
    assert len(g) == 0 and g.format_tree() == "(empty object graph)"


# -- against TF's own parser -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [TF1_ADAM, KERAS, KERAS_MODEL_ONLY, SAVED_MODEL] + SCENARIO_CKPTS)
def test_matches_tf_protobuf(prefix):
    pytest.importorskip("tensorflow")
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    data = raw_graph(prefix)
    proto = trackable_object_graph_pb2.TrackableObjectGraph()
    proto.ParseFromString(data)
    g = parse_object_graph(data)
    assert len(g.nodes) == len(proto.nodes)
    for mine, theirs in zip(g.nodes, proto.nodes):
        assert [(c.node_id, c.local_name) for c in mine.children] == [
            (c.node_id, c.local_name) for c in theirs.children
        ]
        assert [(a.name, a.full_name, a.checkpoint_key) for a in mine.attributes] == [
            (a.name, a.full_name, a.checkpoint_key) for a in theirs.attributes
        ]
        assert [(s.original_variable_node_id, s.slot_name, s.slot_variable_node_id) for s in mine.slot_variables] == [
            (s.original_variable_node_id, s.slot_name, s.slot_variable_node_id) for s in theirs.slot_variables
        ]
        assert mine.has_checkpoint_values == (
            theirs.has_checkpoint_values.value if theirs.HasField("has_checkpoint_values") else None
        )
    assert g.to_bytes() == data
