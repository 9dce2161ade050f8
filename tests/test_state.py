"""The ``checkpoint`` state file (``distrestore.format.state``): parsing and writing like TF.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from format_support import FIXTURES, SETTINGS, tensorflow_or_skip
from hypothesis import given
from hypothesis import strategies as st

import distrestore as dr
from distrestore.errors import CorruptCheckpointError
from distrestore.format.state import CheckpointState, format_state, parse_state


def test_parse_state_observed_manager_file():
    text = (FIXTURES / "manager" / "checkpoint").read_text()
    s = parse_state(text)
    assert s.model_checkpoint_path == "ckpt-4"
    assert s.all_model_checkpoint_paths == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert s.all_model_checkpoint_timestamps == [1795364626.2103877, 1795364626.2156065, 1795364626.220658]
    assert s.last_preserved_timestamp == 1795364625.197822


def test_parse_state_escapes():
    text = (
        'model_checkpoint_path: "dir with \\"quote\\"/caf\\303\\251\\\\x"\n'
        "all_model_checkpoint_paths: 'single\\'q'\n"
        'all_model_checkpoint_paths: "tab\\there\\nnl"\n'
        "# a comment\n"
        "last_preserved_timestamp: 1e3\n"
    )
    s = parse_state(text)
    assert s.model_checkpoint_path == 'dir with "quote"/café\\x'
    assert s.all_model_checkpoint_paths == ["single'q", "tab\there\nnl"]
    assert s.last_preserved_timestamp == 1000.0


def test_parse_state_hash_inside_a_quoted_path_is_not_a_comment():
    text = (
        'model_checkpoint_path: "/data/run#3/ckpt-1"  # the latest\n'
        '# a whole-line comment with a "quote\n'
        "all_model_checkpoint_paths: '/data/run#3/ckpt-1';\n"
    )
    s = parse_state(text)
    assert s.model_checkpoint_path == "/data/run#3/ckpt-1"
    assert s.all_model_checkpoint_paths == ["/data/run#3/ckpt-1"]


def test_parse_state_garbage_is_corrupt():
    with pytest.raises(CorruptCheckpointError, match="my/checkpoint"):
        parse_state("model_checkpoint_path: {{{", "my/checkpoint")


def test_format_state_round_trip():
    s = CheckpointState('a "b"\\c/é\n', ["x", 'a "b"\\c/é\n'], [1.5, 2.25], 3.0)
    assert parse_state(format_state(s)) == s


def _write_state_with_tf(tf, directory: str, latest: str, all_paths: list[str]):
    from tensorflow.python.checkpoint import checkpoint_management

    checkpoint_management.update_checkpoint_state_internal(directory, latest, all_paths)


def test_state_file_written_by_tf_text_format(tmp_path):
    """TF's text format (octal escapes for non-ASCII, escaped quotes) parses to TF's own values."""
    tf = tensorflow_or_skip()
    d = tmp_path / "ckpts"
    d.mkdir()
    names = ['ckpt-"1"', "ckpt-é-2", "ckpt\\3"]
    _write_state_with_tf(tf, str(d), names[-1], names)
    theirs = tf.train.get_checkpoint_state(str(d))
    ours = dr.get_checkpoint_state(str(d))
    assert ours.model_checkpoint_path == theirs.model_checkpoint_path == os.path.join(str(d), names[-1])
    assert ours.all_model_checkpoint_paths == list(theirs.all_model_checkpoint_paths)


PATH_TEXT = st.one_of(
    st.text(st.sampled_from(list("#\"'\\\n\t/ :é漢\x00\x7fab")), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
)


@SETTINGS
@given(PATH_TEXT, st.lists(PATH_TEXT, max_size=4), st.lists(st.floats(allow_nan=False), max_size=4), st.booleans())
def test_parse_state_matches_protobuf_text_format(latest, paths, stamps, as_utf8):
    """Any paths (quotes, backslashes, '#', control and non-ASCII characters) written by
    protobuf's text format parse back to the same values."""
    tensorflow_or_skip()
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    proto = checkpoint_state_pb2.CheckpointState(
        model_checkpoint_path=latest,
        all_model_checkpoint_paths=paths,
        all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=stamps[0] if stamps else 0.0,
    )
    s = parse_state(text_format.MessageToString(proto, as_utf8=as_utf8))
    assert s.model_checkpoint_path == latest
    assert s.all_model_checkpoint_paths == paths
    assert s.all_model_checkpoint_timestamps == [float(np.float64(x)) for x in stamps]
    assert s.last_preserved_timestamp == (stamps[0] if stamps else 0.0)
