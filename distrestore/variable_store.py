"""Name-based restore: a variable store and ``tf.compat.v1.train.init_from_checkpoint``.

``VariableStore`` is the registry of named variables (TF's default v1 variable store), including
partitioned variables split like TF's ``fixed_size_partitioner``. ``init_from_checkpoint`` resolves
an assignment map with TF's rules and records *pending restores*; ``VariableStore.initialize``
reads every pending restore of every call and checkpoint as one parallel plan, then assigns.
Assignment maps are resolved in ``distrestore.assignment_map``; partitioned variables live in
``distrestore.partitioned``.

Semantics (TF 2.21 ``checkpoint_utils._init_from_checkpoint`` unless said otherwise):

* The map is a dict or an iterable of ``(checkpoint_name, target)`` pairs, processed **sorted by
  checkpoint name** (a stable sort, so pairs with the same checkpoint name keep their order).
  A target is a ``Variable``, a list of parts of one partitioned variable, a
  ``PartitionedVariable`` (an extension: TF raises ``TypeError`` for one), or a name. A name is
  looked up in the store (no ``:0``); failing that as ``<name>/part_0, <name>/part_1, ...``;
  failing that it is a scope mapping, resolved with TF's exact string arithmetic (also its
  quirks: ``{'old/': 'new/typo'}`` maps the whole scope ``new``, and names are cut at the first
  ``/part_`` so that every part of a partitioned variable maps to the one full tensor).
* Validation is eager and happens at the call, with TF's ``ValueError`` messages
  (``AssignmentMapError``, ``ShapeMismatchError``, ``DTypeMismatchError``). Unlike TF, a dtype
  mismatch and a partitioned variable whose full shape differs from the tensor's are refused at
  the call too (TF fails only when the initializer runs), and a call that raises records nothing
  (TF has already replaced the initializers of the pairs before the failing one).
* A later mapping for a variable replaces an earlier one, as TF overwrites the initializer: the
  last call wins, and within one call the pair with the greater checkpoint name wins.
* Scope mappings are resolved **at the call**, like TF: a variable registered in the target
  scope after ``init_from_checkpoint`` returned is not covered and keeps its initializer's value
  (call ``init_from_checkpoint`` again to cover it).
* A partitioned variable's callable initializer is called once per part with the part's shape
  (TF calls initializers per shard); an array initializer has the full shape and is split; a
  scalar fills every part.
* ``initialize()`` issues one ``distrestore.restore.fetch`` for all pending restores (identical
  requests are sent once); each part asks only for its region of the checkpoint tensor, so a
  checkpoint partitioned 5 ways restores into 2 or 4 parts without reading anything twice. It
  fetches and checks everything before assigning anything: if any read fails, no variable changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import MappingProxyType

import numpy as np

from . import restore as engine
from .assignment_map import PendingRestore, resolve_assignment_map
from .errors import DTypeMismatchError, ShapeMismatchError
from .format import dtypes
from .index import CheckpointIndex, open_checkpoint
from .partitioned import PartitionedVariable, SaveSliceInfo, VariablePart
from .partitioners import call_partitioner
from .restore import TensorRequest, time_limits
from .storage import Storage
from .variable import Variable

__all__ = [
    "VariableStore",
    "PartitionedVariable",
    "VariablePart",
    "SaveSliceInfo",
    "PendingRestore",
    "init_from_checkpoint",
]


class VariableStore:
    """The registry of named variables that ``init_from_checkpoint`` resolves names against.

    ``get_variable`` creates or returns a variable (TF's ``AUTO_REUSE``); ``initialize`` runs
    every pending restore as one ``fetch``. Checkpoint indexes are read once per path per store.
    """

    def __init__(self):
        self._vars: dict[str, Variable] = {}  # plain variables and parts, like TF's store._vars
        self._partitioned: dict[str, PartitionedVariable] = {}
        self._pending: dict[int, PendingRestore] = {}  # id(variable) -> latest restore for it
        self._indexes: dict[tuple, CheckpointIndex] = {}

    # -- registry ------------------------------------------------------------------------

    def get_variable(self, name: str, shape, dtype="float32", partitions=None, initializer=None, partitioner=None):
        """Create ``name`` or return the existing one (shape, dtype and partitions must match).

        Returns a :class:`Variable`, or a :class:`PartitionedVariable` when ``partitions`` (a part
        count per dimension, at most one > 1) or a TF-style ``partitioner`` (see
        ``distrestore.partitioners``: ``partitioner(shape, dtype) -> partitions``) is given.
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"invalid variable name {name!r} (names have no ':0' suffix)")
        shape = tuple(int(d) for d in shape)
        dt = dtypes.resolve(dtype)
        if partitioner is not None:
            if partitions is not None:
                raise ValueError("pass partitions or a partitioner, not both")
            if shape:  # TF ignores the partitioner of a scalar
                partitions = call_partitioner(partitioner, shape, dt)
        if name in self._partitioned:
            existing = self._partitioned[name]
            if partitions is None:
                raise ValueError(
                    f"A partitioner was not provided, but a partitioned version of the variable "
                    f"was found: {name}. Perhaps a variable of the same name was already created "
                    "with partitioning?"
                )
            self._check_reuse(name, shape, dt, existing.shape, existing.tf_dtype, "partitioned variable")
            if list(partitions) != existing.partitions:
                raise ValueError(
                    f"Trying to reuse partitioned variable {name}, but specified partitions "
                    f"{list(partitions)} and found partitions {existing.partitions}."
                )
            return existing
        if name in self._vars:
            existing = self._vars[name]
            if partitions is not None:
                raise ValueError(
                    "A partitioner was provided, but an unpartitioned version of the variable was "
                    f"found: {name}.  Perhaps a variable of the same name was already created "
                    "without partitioning?"
                )
            self._check_reuse(name, shape, dt, existing.shape, existing.tf_dtype, "variable")
            return existing
        if partitions is None:
            var = Variable(initializer, shape=shape, dtype=dt, name=name)
            self._vars[name] = var
            return var
        pv = PartitionedVariable(name, shape, dt, partitions, initializer)
        clash = [p.name for p in pv.parts if p.name in self._vars]
        if clash or f"{name}/part_{len(pv.parts)}" in self._vars:
            raise ValueError(
                f"Partitioner returned a different partitioning than what was already "
                f"found for {name}: variables {clash or [name + '/part_' + str(len(pv.parts))]} exist"
            )
        self._partitioned[name] = pv
        for part in pv.parts:
            self._vars[part.name] = part
        return pv

    @staticmethod
    def _check_reuse(name, shape, dt, found_shape, found_dt, what):
        if tuple(shape) != tuple(found_shape):
            kind = "share variable" if what == "variable" else f"reuse {what}"
            raise ShapeMismatchError(
                f"Trying to {kind} {name}, but specified shape {list(shape)} and found shape {list(found_shape)}."
            )
        if dt.enum != found_dt.enum:
            kind = "share variable" if what == "variable" else f"reuse {what}"
            raise DTypeMismatchError(
                f"Trying to {kind} {name}, but specified dtype {dt.name} and found dtype {found_dt.name}."
            )

    def get(self, name: str):
        """The variable, part or partitioned variable called ``name``, or None."""
        return self._vars.get(name) or self._partitioned.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._vars or name in self._partitioned

    @property
    def variables(self) -> dict[str, Variable]:
        """Every plain variable and every part by name (TF's ``store._vars``), a copy."""
        return dict(self._vars)

    @property
    def partitioned_variables(self) -> dict[str, PartitionedVariable]:
        return dict(self._partitioned)

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoint(
        self,
        ckpt_dir_or_file,
        *,
        storage_options: dict | None = None,
        storage: Storage | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> CheckpointIndex:
        """The checkpoint's index, read once per path (and storage) for this store. ``timeout``
        (seconds a storage request may stall; the index keeps it for its later reads) and
        ``deadline`` (seconds for opening) apply when the index is read."""
        if isinstance(ckpt_dir_or_file, CheckpointIndex):
            return ckpt_dir_or_file
        path = os.fspath(ckpt_dir_or_file)
        key = (path, repr(sorted((storage_options or {}).items())), id(storage))
        index = self._indexes.get(key)
        if index is None:
            index = open_checkpoint(
                path, storage_options=storage_options, storage=storage, timeout=timeout, deadline=deadline
            )
            # a directory and its latest prefix share one index
            same = (index.prefix, key[1], key[2])
            index = self._indexes.setdefault(same, index)
            self._indexes[key] = index
        return index

    # -- restores ------------------------------------------------------------------------

    def pending_restores(self) -> list[PendingRestore]:
        """The restores ``initialize`` would run, in registration order."""
        return list(self._pending.values())

    def record(self, restores: Iterable[PendingRestore]) -> None:
        """Add pending restores; a later one for a variable replaces an earlier one."""
        for r in restores:
            # a later mapping replaces an earlier one; keep the dict ordered by latest mapping
            self._pending.pop(id(r.variable), None)
            self._pending[id(r.variable)] = r

    def initialize(
        self,
        *,
        executor="threads",
        verify: bool = True,
        max_inflight_bytes=None,
        progress=None,
        fetch=None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """Run every pending restore as one parallel plan, then assign; atomic.

        ``fetch`` replaces ``distrestore.restore.fetch`` (same signature), e.g. a service's.
        ``timeout``: seconds per storage request; ``deadline``: seconds for the whole call (a
        ``StorageError`` when either runs out); each is passed to ``fetch`` only when given.
        On any error nothing is assigned and the restores stay pending.
        """
        pending = list(self._pending.values())
        if not pending:
            return
        slots: dict[tuple, int] = {}
        requests = []
        where = []
        for r in pending:
            key = (id(r.checkpoint), r.tensor, r.box)
            if key not in slots:
                slots[key] = len(requests)
                requests.append(TensorRequest(r.checkpoint, r.tensor, r.region))
            where.append(slots[key])
        run = fetch if fetch is not None else engine.fetch  # looked up now: tests patch it
        kwargs = dict(executor=executor, verify=verify, max_inflight_bytes=max_inflight_bytes, progress=progress)
        kwargs.update(time_limits(timeout, deadline))
        arrays = run(requests, **kwargs)
        if len(arrays) != len(requests):
            raise ValueError(f"fetch returned {len(arrays)} arrays for {len(requests)} requests")
        for r, i in zip(pending, where):
            entry = r.checkpoint.entry(r.tensor)
            arr = np.asarray(arrays[i])
            what = (
                f"tensor {r.tensor}"
                + ("" if r.box is None else f" region {list(r.box)}")
                + f" of checkpoint {r.checkpoint.prefix}"
            )
            if arr.shape != r.shape:
                raise ShapeMismatchError(
                    f"{what}: the engine returned shape {list(arr.shape)}, expected {list(r.shape)}"
                )
            r.variable.check_assignable(arr.shape, entry.dtype, what=what)
        for r, i in zip(pending, where):
            r.variable.assign(arrays[i])
        self._pending.clear()

    def __repr__(self) -> str:
        return (
            f"<dr.VariableStore {len(self._vars)} variables, {len(self._partitioned)} partitioned, "
            f"{len(self._pending)} pending restores>"
        )


def init_from_checkpoint(
    ckpt_dir_or_file,
    assignment_map,
    *,
    store: VariableStore,
    storage_options: dict | None = None,
    storage: Storage | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> None:
    """Map checkpoint tensors onto ``store``'s variables (``tf.compat.v1.train.init_from_checkpoint``).

    Validates now and records pending restores; ``store.initialize()`` loads them. See the module
    docstring for the syntax and where this differs from TF. The checkpoint's index is read here
    (once per store): ``timeout`` (seconds a storage request may stall, kept for the index's
    later reads) and ``deadline`` (seconds for this call) bound that read; TF has neither, as
    it has no storage of its own to bound. ``store.initialize`` takes its own.
    """
    if not isinstance(store, VariableStore):
        raise TypeError(f"store must be a VariableStore, got {type(store).__name__}")
    index = store.checkpoint(
        ckpt_dir_or_file, storage_options=storage_options, storage=storage, timeout=timeout, deadline=deadline
    )
    ckpt = index.prefix if isinstance(ckpt_dir_or_file, CheckpointIndex) else os.fspath(ckpt_dir_or_file)
    store.record(resolve_assignment_map(assignment_map, index, ckpt, MappingProxyType(store._vars)))
