"""The child process that runs hostile checkpoints, one at a time, each under a memory cap.

Per case: the index and data files are written to a scratch directory; the index is decoded by
the native decoder and by the pure-Python one, and their verdicts compared (the same columns,
header, partitioned entries and slice entries, or the same error class); then the index is
used as a user would: shapes and dtypes listed, every tensor restored at once and a few one by
one, variant records and regions of partitioned tensors read. Any exception that is not a
``DistRestoreError`` is a failure, as is a disagreement of the decoders. CPU and wall time and
the peak resident memory the case added (``VmHWM``, reset per case through
``/proc/self/clear_refs``) are reported; ``RLIMIT_AS`` caps the case at its budget (64 MiB + 4 x
the files' sizes, over the address space in use before it) so that an allocation beyond it fails
as MemoryError, a failure, rather than taking the machine.

Started by ``harness.Worker``; speaks length-prefixed pickles on stdin/stdout: a request is
``("gen", (level, seed))`` or ``("case", Case)`` (a reply: ``Result``), or ``("op", (Case,
operation, args))`` (a reply: ``Outcome``: what one named operation did), None to stop.
"""

from __future__ import annotations

import os
import pickle
import re
import resource
import struct
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the `fuzz` package

from distrestore.errors import DistRestoreError
from distrestore.execute.threads import ThreadExecutor
from distrestore.format import entry_table
from distrestore.index import CheckpointIndex
from distrestore.reader import CheckpointReader
from distrestore.restore import restore_tensors
from distrestore.storage import Storage
from fuzz import cases
from fuzz.hostile import Case

FIXED_BUDGET = 64 << 20
THREAD_STACK = 256 << 10  # the read threads' stacks (the default 8 MiB each would eat the cap)
MAX_SINGLE = 4  # tensors also restored one by one (the first error of a restore hides the rest)
EXECUTOR = ThreadExecutor(workers=2)


class Result(NamedTuple):
    label: str
    outcome: str  # "ok", or the error class the index open ended with (the native decoder's)
    uses: tuple[str, ...]  # outcome of each use of an opened index
    failure: str | None  # why the case failed: a non-library error, a disagreement, ...
    agreed: bool | None  # the two decoders' verdicts equal (None: no native decoder here)
    cpu_s: float
    wall_s: float
    peak_bytes: int  # resident memory the case added at its peak
    nbytes: int  # the case's files together


class Failure(Exception):
    pass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _summary(idx: CheckpointIndex):
    """Everything the decoders produce, through public views."""
    c = idx.columns()
    parts = []
    for e in idx.entries.partitioned():
        for s in e.slices:
            try:
                parts.append(idx.slice_entry(e.name, s))
            except DistRestoreError as err:
                parts.append(type(err).__name__)
    cols = [c.names, *(a.tolist() for a in (c.dtype, c.shard, c.offset, c.size, c.crc, c.sliced, c.expected_size))]
    return idx.header, cols, list(c.shapes), idx.entries.partitioned(), parts


def _decode(prefix: str, raw: bytes, native):
    saved = entry_table.native
    entry_table.native = native
    try:
        idx = CheckpointIndex.from_bytes(prefix, raw, Storage())
        return idx, ("ok", _summary(idx))
    except DistRestoreError as e:
        return None, ("error", type(e).__name__)
    except Exception as e:
        raise Failure(f"{'native' if native else 'Python'} decoder: {_describe(e)}") from e
    finally:
        entry_table.native = saved


def _describe(e: BaseException) -> str:
    return f"non-library error {type(e).__module__}.{type(e).__name__}: {e}\n{traceback.format_exc(limit=12)}"


def _use(what: str, fn) -> str:
    try:
        fn()
        return "ok"
    except DistRestoreError as e:
        return type(e).__name__
    except Exception as e:
        raise Failure(f"{what}: {_describe(e)}") from e


def _exercise(idx: CheckpointIndex) -> tuple[str, ...]:
    uses = [_use("shape/dtype maps", lambda: (idx.shape_map(), idx.dtype_map(), list(idx.entries.values())))]
    uses.append(_use("restore_tensors", lambda: restore_tensors(idx, executor=EXECUTOR)))
    reader = CheckpointReader(idx)
    cols = idx.columns()
    for name in cols.names[:MAX_SINGLE]:
        is_variant = idx.entries[name].dtype.is_variant
        uses.append(
            _use(
                f"reading {name!r}",
                (lambda n=name: reader.get_variant_records(n)) if is_variant else (lambda n=name: reader.get_tensor(n)),
            )
        )
    for e in idx.entries.partitioned()[:2]:
        if e.shape and e.shape[0] > 0:
            region = (slice(0, max(1, e.shape[0] // 2)),)
            uses.append(_use(f"region of {e.name!r}", lambda n=e.name, r=region: reader.get_slice(n, r)))
    return tuple(uses)


class _Capped:
    """The case's files written under ``workdir``; inside the block, the address-space cap and
    the clocks run; afterwards ``cpu_s``, ``wall_s``, ``peak_bytes`` and ``cap`` say what it took."""

    def __init__(self, case: Case, workdir: str):
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        self.prefix = os.path.join(workdir, "c")
        with open(self.prefix + ".index", "wb") as f:
            f.write(case.index)
        for suffix, blob in case.data:
            with open(self.prefix + suffix, "wb") as f:
                f.write(blob)
        self.budget = FIXED_BUDGET + 4 * case.nbytes + 4 * THREAD_STACK

    def __enter__(self):
        self.limits = resource.getrlimit(resource.RLIMIT_AS)
        self.rss0 = _status("VmRSS")
        _reset_peak()
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + self.budget, self.limits[1]))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.limits)
        self.cpu_s, self.wall_s = time.process_time() - self.cpu0, time.perf_counter() - self.wall0
        self.peak_bytes = _status("VmHWM") - self.rss0
        return False


def run_case(case: Case, workdir: str) -> Result:
    failure, outcome, uses, agreed = None, "?", (), None
    run = _Capped(case, workdir)
    with run:
        try:
            native = entry_table.native
            idx, verdict = _decode(run.prefix, case.index, None)
            if native is not None:
                idx_native, verdict_native = _decode(run.prefix, case.index, native)
                agreed = verdict_native == verdict
                if not agreed:
                    raise Failure(f"decoders disagree: native {_short(verdict_native)}, Python {_short(verdict)}")
                idx = idx_native
            outcome = "ok" if idx is not None else verdict[1]
            if idx is not None:
                uses = _exercise(idx)
        except Failure as e:
            failure = str(e)
        except MemoryError:
            failure = f"MemoryError: over the cap of {run.budget} more bytes\n{traceback.format_exc(limit=12)}"
    return Result(case.label, outcome, uses, failure, agreed, run.cpu_s, run.wall_s, run.peak_bytes, case.nbytes)


class Outcome(NamedTuple):
    """What one named operation on a case did (the catalogue's view)."""

    error: str | None  # "module.Class" of what it raised, None when it returned
    message: str
    library: bool  # the error is a DistRestoreError (or there was none)
    mro: tuple[str, ...]  # the error's classes, for isinstance checks across the process boundary
    agreed: bool | None  # the two index decoders' verdicts equal
    cpu_s: float
    wall_s: float
    peak_bytes: int
    nbytes: int


def _op(prefix: str, op: str, args: tuple):
    from distrestore import list_variables, load_checkpoint

    if op == "open":
        return CheckpointIndex.open(prefix, Storage())
    if op == "list":
        return list_variables(prefix)
    if op == "restore":
        return restore_tensors(prefix, *args, executor=EXECUTOR)
    reader = load_checkpoint(prefix)
    if op == "tensor":
        return reader.get_tensor(*args)
    if op == "region":
        return reader.get_slice(*args)
    if op == "variant":
        return reader.get_variant_records(*args)
    raise ValueError(f"no operation {op!r}")


def run_op(case: Case, op: str, args: tuple, workdir: str) -> Outcome:
    """Write the case, compare the decoders' verdicts on its index, then run ``op`` under the cap."""
    error, message, library, mro, agreed = None, "", True, (), None
    run = _Capped(case, workdir)
    with run:
        try:
            try:
                if entry_table.native is not None:
                    agreed = (
                        _decode(run.prefix, case.index, None)[1]
                        == _decode(run.prefix, case.index, entry_table.native)[1]
                    )
            except Failure as e:
                agreed, message = False, str(e)
            _op(run.prefix, op, args)
        except BaseException as e:  # noqa: B036 - MemoryError and friends are what this reports
            error = f"{type(e).__module__}.{type(e).__qualname__}"
            message, library = str(e), isinstance(e, DistRestoreError)
            mro = tuple(f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__)
    return Outcome(error, message, library, mro, agreed, run.cpu_s, run.wall_s, run.peak_bytes, case.nbytes)


def _short(verdict) -> str:
    return repr(verdict)[:2000]


def main() -> None:
    threading.stack_size(THREAD_STACK)
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the reply stream
    inp = sys.stdin.buffer
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="distrestore-fuzz-", dir=shm) as workdir:
        for seed in range(3):  # warm-up: imports, thread pools and allocator arenas exist before the first cap
            run_case(cases.generate("entry", -1 - seed), workdir)
        while True:
            head = inp.read(4)
            if len(head) < 4:
                return
            msg = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
            if msg is None:
                return
            kind, payload = msg
            if kind == "gen":
                try:
                    case = cases.generate(*payload)
                except Exception:
                    reply = Result(f"{payload}", "?", (), f"generator: {traceback.format_exc()}", None, 0, 0, 0, 0)
                    case = None
            elif kind == "op":
                case = None
                reply = run_op(*payload, workdir)
            else:
                case = payload
            if case is not None:
                reply = run_case(case, workdir)
            blob = pickle.dumps(tuple(reply))  # a plain tuple: Result is __main__'s here
            out.write(struct.pack("<I", len(blob)) + blob)
            out.flush()


if __name__ == "__main__":
    main()
