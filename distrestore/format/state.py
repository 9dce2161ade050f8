"""The ``checkpoint`` state file: a text-format ``CheckpointState`` proto (checkpoint_state.proto)."""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple

from ..errors import CorruptCheckpointError


class CheckpointState(NamedTuple):
    model_checkpoint_path: str
    all_model_checkpoint_paths: list[str]
    all_model_checkpoint_timestamps: list[float]
    last_preserved_timestamp: float


_TOKEN = re.compile(r'([A-Za-z_]+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([-+0-9.eEinfINFa]+))')
# between fields: whitespace, comments and the optional ',' / ';' separators. Comments are skipped
# here, not stripped beforehand, so a '#' inside a quoted path stays part of the path.
_SKIP = re.compile(r"(?:\s+|#[^\n]*|[,;])*")


def _unescape(s: str) -> str:
    return codecs.escape_decode(s.encode("utf-8"))[0].decode("utf-8")


def parse_state(text: str, where: str = "checkpoint") -> CheckpointState:
    """Parse the text format TF writes (``text_format.MessageToString``)."""
    latest = ""
    paths: list[str] = []
    stamps: list[float] = []
    preserved = 0.0
    pos = _SKIP.match(text).end()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise CorruptCheckpointError(f"{where}: cannot parse checkpoint state near {text[pos : pos + 40]!r}")
        name, dq, sq, num = m.groups()
        value = _unescape(dq if dq is not None else sq) if num is None else num
        if name == "model_checkpoint_path":
            latest = value
        elif name == "all_model_checkpoint_paths":
            paths.append(value)
        elif name == "all_model_checkpoint_timestamps":
            stamps.append(float(value))
        elif name == "last_preserved_timestamp":
            preserved = float(value)
        pos = _SKIP.match(text, m.end()).end()
    return CheckpointState(latest, paths, stamps, preserved)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_state(state: CheckpointState) -> str:
    lines = [f"model_checkpoint_path: {_quote(state.model_checkpoint_path)}"]
    lines += [f"all_model_checkpoint_paths: {_quote(p)}" for p in state.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in state.all_model_checkpoint_timestamps]
    if state.last_preserved_timestamp:
        lines.append(f"last_preserved_timestamp: {state.last_preserved_timestamp!r}")
    return "\n".join(lines) + "\n"
