"""distrestore: read TensorFlow checkpoints (local, S3, GCS) in parallel, without TensorFlow.

Run "distrestore COMMAND --help" for a command's options. Exit codes: 0 when it worked; 1 when a
restore, verification or write failed (corrupt data, a checksum mismatch, a storage error,
conflicting merge sources); 2 for bad usage, something not found (a path, a tensor), or a
request the tool cannot do (a V1-format checkpoint, a dtype the output format cannot hold).
Errors are one line on stderr; --debug adds the traceback.

Examples:
  distrestore ls s3://bucket/run7/model.ckpt-7 --storage-option profile=ml
  distrestore restore gs://bucket/run7 --verify-only --timeout 10 --deadline 600
  distrestore restore ckpts/run7 --output tensors.npz
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import os
import sys
import traceback

# Each command is a module with a docstring (its --help text), HELP (one line for the command
# list), add_arguments(parser) and run(args) -> exit code. Adding a command is one line here.
COMMANDS = {
    "ls": "distrestore.cli.ls",
    "tree": "distrestore.cli.tree",
    "plan": "distrestore.cli.plan",
    "restore": "distrestore.cli.restore",
    "convert": "distrestore.cli.convert",
    "merge": "distrestore.cli.merge",
    "demo": "distrestore.cli.demo",
    "serve": "distrestore.ray.cli",  # the restore service (imports ray only when run)
}

USAGE, FAILED, OK = 2, 1, 0


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line on stderr (exit code 2)."""

    def error(self, message: str):
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    parser = _Parser(
        prog="distrestore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run, parser=p)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line (``args.run(args)`` runs it); exits with code 2 on bad usage."""
    return build_parser().parse_args(argv)


def exit_code(exc: BaseException) -> int:
    """2 for what was asked wrongly or is not there, 1 for what failed while being done."""
    from ..errors import CheckpointNotFoundError, TensorNotFoundError, UnsupportedCheckpointError

    if isinstance(exc, (CheckpointNotFoundError, TensorNotFoundError, UnsupportedCheckpointError)):
        return USAGE
    if isinstance(exc, FileNotFoundError):
        return USAGE
    return FAILED


def _tolerant_stdout() -> None:
    """Tensor names that are not UTF-8 (kept with ``surrogateescape`` when the index is read)
    print as their own bytes on a UTF-8 stdout, escaped on any other; never an encoding error."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    if reconfigure is not None:
        utf8 = codecs.lookup(encoding).name == "utf-8"
        reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def main(argv=None) -> int:
    """Run the command line; returns the exit code (``python -m distrestore`` exits with it)."""
    _tolerant_stdout()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else USAGE
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except SystemExit as e:  # a usage error found after parsing (args.parser.error)
        return e.code if isinstance(e.code, int) else USAGE
    except BrokenPipeError:  # the reader of our output went away (`distrestore ls ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # as a tool killed by SIGPIPE
    except KeyboardInterrupt:
        print(f"distrestore {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        from ..errors import DistRestoreError

        hint = "" if debug or isinstance(e, (DistRestoreError, OSError)) else " (run with --debug for the traceback)"
        print(f"distrestore {args.command}: {one_line(e)}{hint}", file=sys.stderr)
        return exit_code(e)
