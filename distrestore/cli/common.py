"""What the commands share: the checkpoint and storage-option arguments, tensor selection,
executors, time limits and the one-line summaries."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

STREAM_BUDGET = 256 << 20  # the default --max-inflight-bytes: restores stream, memory stays bounded

# -- argument types (argparse turns their ArgumentTypeError into a usage error, exit code 2) ----


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at position {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, object]:
    """``key=value``; the value is JSON when it parses as JSON (``true``, ``3``, ``{"a": 1}``),
    else the string itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {e}") from None


def byte_count(text: str) -> int:
    """``1048576``, ``64MiB``, ``2GB``, ``512k``."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a byte count like 268435456, 256MiB or 2GB, got {text!r}")
    number, unit, suffix = m.groups()
    base = 1024 if suffix.startswith("i") or (unit and not suffix) else 1000
    value = int(number) * base ** "_kmgt".index(unit or "_")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive byte count, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# -- arguments ------------------------------------------------------------------------------


def add_checkpoint(parser: argparse.ArgumentParser, nargs=None) -> None:
    parser.add_argument(
        "checkpoint",
        nargs=nargs,
        help="a checkpoint prefix, a directory with a 'checkpoint' file, or a SavedModel directory; "
        "a local path or a URL (s3://, gs://, any fsspec URL)",
    )
    add_storage_options(parser)


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("storage")
    g.add_argument(
        "--storage-options",
        metavar="JSON",
        type=json_object,
        default=None,
        help="fsspec storage options as a JSON object, e.g. '{\"anon\": true}'",
    )
    g.add_argument(
        "--storage-option",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="one storage option (repeatable; the value is read as JSON when it is JSON, else as text); "
        "overrides the same key in --storage-options",
    )


def add_selection(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="these tensors only (default: all but variants); the list takes every word up to the next "
        "option, so give the checkpoint before it",
    )
    g.add_argument(
        "--regex", type=regex, metavar="RE", help="the tensors whose names match RE anywhere (anchor with ^ and $)"
    )


def add_reading(parser: argparse.ArgumentParser, *, executor: bool = True) -> None:
    g = parser.add_argument_group("reading")
    if executor:
        g.add_argument(
            "--executor",
            default="threads",
            choices=["threads", "ray"],
            help="threads in this process (default), or Ray read workers (joins RAY_ADDRESS or starts a local Ray)",
        )
    g.add_argument(
        "--max-inflight-bytes",
        type=byte_count,
        metavar="N",
        default=STREAM_BUDGET,
        help="at most N bytes of reads outstanding (e.g. 64MiB, 2GB; default 256MiB)",
    )
    add_limits(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar (one is shown on a terminal)")


def add_limits(parser) -> None:
    """``--timeout`` and ``--deadline`` (read by :class:`Limits`)."""
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="seconds a storage request may wait to connect or for its next bytes before it is retried (default 30)",
    )
    parser.add_argument(
        "--deadline",
        type=positive_float,
        metavar="S",
        help="seconds for all of the command's reads, opening the checkpoint included (default: none); "
        "past it the command fails (exit code 1) naming the file and byte range it was reading",
    )


def storage_options(args) -> dict | None:
    options = dict(args.storage_options or {})
    options.update(dict(args.storage_option))
    return options or None


# -- selection ------------------------------------------------------------------------------


def selected_names(args, index) -> list[str]:
    """The tensors ``--names``/``--regex`` pick (every non-variant tensor by default), checked
    against the index: an unknown name is a ``TensorNotFoundError``, a regex that matches nothing
    a usage error."""
    from ..errors import TensorNotFoundError

    if args.names:
        missing = [n for n in args.names if not index.has_tensor(n)]
        if missing:
            raise TensorNotFoundError(f"no tensor {', '.join(map(repr, missing))} in checkpoint {index.prefix}")
        return list(dict.fromkeys(args.names))
    names = [n for n, e in index.entries.items() if not e.dtype.is_variant]
    if args.regex is not None:
        names = [n for n in names if args.regex.search(n)]
        if not names:
            args.parser.error(f"no tensor name matches --regex {args.regex.pattern!r}")
    return names


# -- the library ----------------------------------------------------------------------------


class Limits:
    """``--timeout`` and ``--deadline`` for a command's reads. The deadline is for the whole
    command: each library call gets what is left of it (``deadline()``, from the moment the
    command started)."""

    def __init__(self, args):
        self.timeout = getattr(args, "timeout", None)
        seconds = getattr(args, "deadline", None)
        self._end = None if seconds is None else time.monotonic() + seconds

    def deadline(self) -> float | None:
        """Seconds left of ``--deadline`` (None without one)."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())


def open_checkpoint(args, limits: Limits):
    """The index of ``args.checkpoint`` (``--storage-options``), opened under ``limits``."""
    from ..index import open_checkpoint

    return open_checkpoint(
        args.checkpoint, storage_options=storage_options(args), timeout=limits.timeout, deadline=limits.deadline()
    )


def executor(name: str):
    """``"threads"``, or a Ray executor that joins Ray as a Ray job's driver must (the library
    never calls ``ray.init`` unasked): the cluster ``RAY_ADDRESS`` names when it is set, else a
    new local Ray."""
    if name != "ray":
        return name
    from .. import RayExecutor  # imports ray, on demand

    if os.environ.get("RAY_ADDRESS"):
        return RayExecutor(init_kwargs={"log_to_driver": False})
    return RayExecutor(init_kwargs={"address": "local", "include_dashboard": False, "log_to_driver": False})


def progress(args) -> bool:
    return not getattr(args, "no_progress", False)


# -- reporting ------------------------------------------------------------------------------


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def summary(verb: str, tensors: int, nbytes: int, seconds: float, extra: str = "") -> str:
    """``restored 48 tensors, 12.6 MB in 0.10 s (126.0 MB/s)...``"""
    rate = nbytes / max(seconds, 1e-9)
    text = f"{verb} {tensors} tensors, {human_bytes(nbytes)} in {seconds:.2f} s ({human_bytes(rate)}/s)"
    return text + (f", {extra}" if extra else "")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
