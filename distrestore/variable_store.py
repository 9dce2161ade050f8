"""Name-based restore: a variable store and ``tf.compat.v1.train.init_from_checkpoint``.

``VariableStore`` is the registry of named variables (TF's default v1 variable store), including
partitioned variables split like TF's ``fixed_size_partitioner``. ``init_from_checkpoint`` resolves
an assignment map with TF's rules and records *pending restores*; ``VariableStore.initialize``
reads every pending restore of every call and checkpoint as one parallel plan, then assigns.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import AssignmentMapError, DTypeMismatchError, ShapeMismatchError
from .format import dtypes
from .format.slices import Box, box_shape, format_spec
from .index import CheckpointIndex, open_checkpoint
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


# -- variables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveSliceInfo:
    """Where one part lies in its partitioned variable (TF's ``Variable.SaveSliceInfo``)."""

    full_name: str
    full_shape: tuple[int, ...]
    var_offset: tuple[int, ...]
    var_shape: tuple[int, ...]

    @property
    def spec(self) -> str:
        """TF's slice spec, e.g. ``"100 100 0,20:0,100"`` (every dimension written out)."""
        return format_spec(self.full_shape, self.box)

    @property
    def box(self) -> Box:
        return tuple((o, o + n) for o, n in zip(self.var_offset, self.var_shape))


class VariablePart(Variable):
    """One part of a :class:`PartitionedVariable`: a ``Variable`` that knows its slice."""

    def __init__(self, initial_value, *, dtype: dtypes.DType, info: SaveSliceInfo, index: int):
        super().__init__(initial_value, shape=info.var_shape, dtype=dtype, name=f"{info.full_name}/part_{index}")
        self.save_slice_info = info

    @property
    def offset(self) -> tuple[int, ...]:
        return self.save_slice_info.var_offset

    @property
    def full_name(self) -> str:
        return self.save_slice_info.full_name

    @property
    def full_shape(self) -> tuple[int, ...]:
        return self.save_slice_info.full_shape

    @property
    def spec(self) -> str:
        return self.save_slice_info.spec

    @property
    def region(self) -> tuple[slice, ...]:
        """This part's region of the full tensor, as numpy slices."""
        return tuple(slice(a, b) for a, b in self.save_slice_info.box)


def _slice_layout(shape: tuple[int, ...], partitions: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """TF's ``_call_partitioner`` checks and ``_iter_slices``: [(offset, part shape), ...]."""
    if len(shape) < 1:
        raise ValueError(f"A partitioned Variable must have rank at least 1, shape: {list(shape)}")
    partitions = [int(p) for p in partitions]
    if len(partitions) != len(shape):
        raise ValueError(
            "Partitioner returned a partition list that does not match the "
            f"Variable's rank: {partitions} vs. {list(shape)}"
        )
    if any(p < 1 for p in partitions):
        raise ValueError(f"Partitioner returned zero partitions for some axes: {partitions}")
    if sum(p > 1 for p in partitions) > 1:
        raise ValueError(
            f"Can only slice a variable along one dimension: shape: {list(shape)}, partitioning: {partitions}"
        )
    dim = next((d for d, p in enumerate(partitions) if p > 1), 0)
    num = partitions[dim]
    if num > shape[dim]:
        # TF's _PartitionInfo rejects the empty parts this would make
        raise ValueError(f"cannot split dimension {dim} of size {shape[dim]} into {num} parts")
    excess, base = shape[dim] % num, shape[dim] // num
    out, offset = [], [0] * len(shape)
    for i in range(num):
        part = list(shape)
        part[dim] = base + (i < excess)
        out.append((tuple(offset), tuple(part)))
        offset[dim] += part[dim]
    return out


class PartitionedVariable:
    """A variable stored as parts ``<name>/part_<i>`` split along one dimension, like TF's.

    ``parts`` are :class:`VariablePart` objects (``Variable`` subclasses with ``offset``,
    ``spec`` and ``region``); ``numpy()`` assembles the whole value.
    """

    def __init__(
        self, name: str, shape: tuple[int, ...], dtype: dtypes.DType, partitions: Sequence[int], initializer=None
    ):
        self.name = name
        self._shape = tuple(int(d) for d in shape)
        self._dtype = dtype
        self.partitions = [int(p) for p in partitions]
        layout = _slice_layout(self._shape, self.partitions)
        full_init = None
        if initializer is not None and not callable(initializer):
            full_init = np.asarray(initializer) if dtype.fixed_width else np.asarray(initializer, dtype=object)
            if full_init.ndim and full_init.shape != self._shape:
                raise ShapeMismatchError(
                    f"initializer of shape {list(full_init.shape)} does not match partitioned "
                    f"variable {name} of shape {list(self._shape)}"
                )
        self.parts: list[VariablePart] = []
        for i, (offset, part_shape) in enumerate(layout):
            info = SaveSliceInfo(name, self._shape, offset, part_shape)
            if full_init is None:
                init = initializer  # None (zeros) or a callable, called with the part's shape
            elif full_init.ndim == 0:
                init = full_init
            else:
                init = full_init[tuple(slice(a, b) for a, b in info.box)]
            self.parts.append(VariablePart(init, dtype=dtype, info=info, index=i))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype.numpy

    @property
    def tf_dtype(self) -> dtypes.DType:
        return self._dtype

    def numpy(self) -> np.ndarray:
        """The whole value, assembled from the parts (a new array)."""
        out = np.empty(self._shape, dtype=self._dtype.numpy)
        for part in self.parts:
            out[part.region] = part.numpy()
        return out

    def assign(self, value) -> PartitionedVariable:
        arr = np.asarray(value, dtype=self._dtype.numpy)
        if arr.shape != self._shape:
            raise ShapeMismatchError(
                f"cannot assign a value of shape {list(arr.shape)} to partitioned "
                f"variable {self.name} of shape {list(self._shape)}"
            )
        for part in self.parts:
            part.assign(arr[part.region])
        return self

    def __iter__(self):
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def __repr__(self) -> str:
        return (
            f"<dr.PartitionedVariable {self.name} shape={list(self._shape)} "
            f"dtype={self._dtype.name} partitions={self.partitions}>"
        )


# -- pending restores -----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingRestore:
    """One variable (or part) waiting for ``region`` of ``tensor`` in ``checkpoint``."""

    variable: Variable
    checkpoint: CheckpointIndex
    tensor: str
    box: Box | None  # in the checkpoint tensor's coordinates; None = the whole tensor

    @property
    def region(self) -> tuple[slice, ...] | None:
        return None if self.box is None else tuple(slice(a, b) for a, b in self.box)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.checkpoint.entry(self.tensor).shape if self.box is None else box_shape(self.box)


# -- the store --------------------------------------------------------------------------------


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

    def get_variable(self, name: str, shape, dtype="float32", partitions=None, initializer=None):
        """Create ``name`` or return the existing one (shape, dtype and partitions must match).

        Returns a :class:`Variable`, or a :class:`PartitionedVariable` when ``partitions`` (a part
        count per dimension, exactly one > 1 like ``fixed_size_partitioner``) is given.
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"invalid variable name {name!r} (names have no ':0' suffix)")
        shape = tuple(int(d) for d in shape)
        dt = dtypes.resolve(dtype)
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
        self, ckpt_dir_or_file, *, storage_options: dict | None = None, storage: Storage | None = None
    ) -> CheckpointIndex:
        """The checkpoint's index, read once per path (and storage) for this store."""
        if isinstance(ckpt_dir_or_file, CheckpointIndex):
            return ckpt_dir_or_file
        path = os.fspath(ckpt_dir_or_file)
        key = (path, repr(sorted((storage_options or {}).items())), id(storage))
        index = self._indexes.get(key)
        if index is None:
            index = open_checkpoint(path, storage_options=storage_options, storage=storage)
            # a directory and its latest prefix share one index
            same = (index.prefix, key[1], key[2])
            index = self._indexes.setdefault(same, index)
            self._indexes[key] = index
        return index

    # -- restores ------------------------------------------------------------------------

    def pending_restores(self) -> list[PendingRestore]:
        """The restores ``initialize`` would run, in registration order."""
        return list(self._pending.values())

    def _record(self, restores: Iterable[PendingRestore]) -> None:
        for r in restores:
            # a later mapping replaces an earlier one; keep the dict ordered by latest mapping
            self._pending.pop(id(r.variable), None)
            self._pending[id(r.variable)] = r

    def initialize(
        self, *, executor="threads", verify: bool = True, max_inflight_bytes=None, progress=None, fetch=None
    ) -> None:
        """Run every pending restore as one parallel plan, then assign; atomic.

        ``fetch`` replaces ``distrestore.restore.fetch`` (same signature), e.g. a service's.
        On any error nothing is assigned and the restores stay pending.
        """
        pending = list(self._pending.values())
        if not pending:
            return
        from . import restore as _restore  # the engine; imported late (a lower layer's module)

        slots: dict[tuple, int] = {}
        requests = []
        where = []
        for r in pending:
            key = (id(r.checkpoint), r.tensor, r.box)
            if key not in slots:
                slots[key] = len(requests)
                requests.append(_restore.TensorRequest(r.checkpoint, r.tensor, r.region))
            where.append(slots[key])
        run = fetch if fetch is not None else _restore.fetch
        arrays = run(
            requests, executor=executor, verify=verify, max_inflight_bytes=max_inflight_bytes, progress=progress
        )
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


# -- init_from_checkpoint -------------------------------------------------------------------


def _pairs(assignment_map) -> list[tuple[str, Any]]:
    items = assignment_map.items() if isinstance(assignment_map, Mapping) else assignment_map
    pairs = []
    for item in items:
        try:
            ckpt_name, target = item
        except (TypeError, ValueError):
            raise AssignmentMapError(
                f"assignment_map items must be (checkpoint name, variable or name) pairs, got {item!r}"
            ) from None
        if not isinstance(ckpt_name, str):
            raise AssignmentMapError(f"checkpoint names in an assignment_map are strings, got {ckpt_name!r}")
        pairs.append((ckpt_name, target))
    return sorted(pairs, key=lambda p: p[0])  # TF sorts by checkpoint name only (stable)


def _collect_partitioned(name: str, all_vars: dict[str, Variable]) -> list[Variable] | None:
    """TF's ``_collect_partitioned_variable``: ``name/part_0, name/part_1, ...`` while they exist."""
    if f"{name}/part_0" not in all_vars:
        return None
    out, i = [], 0
    while f"{name}/part_{i}" in all_vars:
        out.append(all_vars[f"{name}/part_{i}"])
        i += 1
    return out


def _not_found(
    tensor: str, where: str, ckpt: str, index: CheckpointIndex, scoped: str | None = None
) -> AssignmentMapError:
    head = (
        f"Tensor {tensor} is not found in {ckpt} checkpoint"
        if scoped is None
        else f"Tensor {tensor} ({scoped} in {where}) is not found in {ckpt} checkpoint"
    )
    names = list(index.entries)
    near = [n for n in names if n.rsplit("/", 1)[-1] == tensor.rsplit("/", 1)[-1].split(":")[0]][:5]
    hint = f"; tensors with that base name: {near}" if near else ""
    return AssignmentMapError(f"{head} ({len(names)} tensors at {index.prefix}{hint})")


def _restores_for(target, tensor: str, index: CheckpointIndex, ckpt: str) -> list[PendingRestore]:
    """Check ``target`` against the checkpoint's ``tensor`` and make its pending restores."""
    entry = index.entry(tensor)
    what = f"tensor {tensor} from checkpoint {ckpt}"
    if isinstance(target, Variable):
        # like TF: a single variable (a part included) takes the whole tensor
        if tuple(target.shape) != tuple(entry.shape):
            raise ShapeMismatchError(
                f"Shape of variable {target.name or '<unnamed>'} ({tuple(target.shape)}) doesn't match "
                f"with shape of tensor {tensor} ({list(entry.shape)}) from checkpoint reader."
            )
        target.check_assignable(entry.shape, entry.dtype, what=what)
        return [PendingRestore(target, index, tensor, None)]
    out, full_name = [], None
    for part in target:
        info = getattr(part, "save_slice_info", None)
        if not isinstance(part, Variable) or info is None:
            raise AssignmentMapError(
                f"{getattr(part, 'name', part)!r} is not a part of a partitioned variable; a list in an "
                "assignment_map must hold the parts of one partitioned variable"
            )
        if full_name is None:
            full_name = info.full_name
        elif info.full_name != full_name:
            raise AssignmentMapError(f"Slices must all be from the same tensor: {full_name} != {info.full_name}")
        if tuple(info.full_shape) != tuple(entry.shape):
            # TF finds this only when the initializer runs (RestoreV2 with the part's slice spec)
            raise ShapeMismatchError(
                f"Shape of partitioned variable {full_name} ({tuple(info.full_shape)}) doesn't match "
                f"with shape of tensor {tensor} ({list(entry.shape)}) from checkpoint reader."
            )
        part.check_assignable(info.var_shape, entry.dtype, what=what)
        out.append(PendingRestore(part, index, tensor, info.box))
    return out


def _is_parts_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(v, Variable) for v in x)


def init_from_checkpoint(
    ckpt_dir_or_file,
    assignment_map,
    *,
    store: VariableStore,
    storage_options: dict | None = None,
    storage: Storage | None = None,
) -> None:
    """Map checkpoint tensors onto ``store``'s variables (``tf.compat.v1.train.init_from_checkpoint``).

    Validates now and records pending restores; ``store.initialize()`` loads them. See the module
    docstring for the syntax and where this differs from TF.
    """
    if not isinstance(store, VariableStore):
        raise TypeError(f"store must be a VariableStore, got {type(store).__name__}")
    index = store.checkpoint(ckpt_dir_or_file, storage_options=storage_options, storage=storage)
    ckpt = index.prefix if isinstance(ckpt_dir_or_file, CheckpointIndex) else os.fspath(ckpt_dir_or_file)
    variable_map = index.entries
    restores: list[PendingRestore] = []
    store_vars = store._vars
    for tensor_name, current in _pairs(assignment_map):
        if isinstance(current, PartitionedVariable):
            var = list(current.parts)  # an extension: TF raises TypeError for a PartitionedVariable
        elif isinstance(current, Variable) or (isinstance(current, list) and _is_parts_list(current)):
            var = current
        elif isinstance(current, tuple) and _is_parts_list(current):
            var = list(current)
        elif isinstance(current, str):
            var = store_vars.get(current)
            if var is None:
                var = _collect_partitioned(current, store_vars)
        else:
            raise AssignmentMapError(
                f"assignment_map value for {tensor_name!r} must be a variable name, a Variable, a list of "
                f"parts or a PartitionedVariable, got {type(current).__name__}"
            )
        if var is not None:
            if tensor_name not in variable_map:
                raise _not_found(tensor_name, "", ckpt, index)
            restores += _restores_for(var, tensor_name, index, ckpt)
            continue
        # a scope mapping, with TF's string arithmetic
        scopes = current[: current.rindex("/")] if "/" in current else ""
        if not tensor_name.endswith("/"):
            raise AssignmentMapError(
                f"Assignment map with scope only name {scopes} should map to scope only "
                f"{tensor_name}. Should be 'scope/': 'other_scope/'."
            )
        scope_variables = set()
        for var_name in store_vars:
            if not scopes or var_name.startswith(scopes + "/"):
                if "/part_" in var_name:  # every part maps to the one full tensor
                    var_name = var_name[: var_name.index("/part_")]
                scope_variables.add(var_name)
        for var_name in sorted(scope_variables):
            full_tensor_name = var_name[len(scopes) :]
            if current != "/":
                full_tensor_name = full_tensor_name[1:]
            if tensor_name != "/":
                full_tensor_name = tensor_name + full_tensor_name
            if full_tensor_name.endswith("/"):
                full_tensor_name = full_tensor_name[:-1]
            if full_tensor_name not in variable_map:
                raise _not_found(full_tensor_name, tensor_name, ckpt, index, scoped=var_name[len(scopes) + 1 :])
            var = store_vars.get(var_name)
            if var is None:
                var = _collect_partitioned(var_name, store_vars)
            if var is None:
                # TF crashes here (AttributeError on None): a '/part_' name that is no partition
                raise AssignmentMapError(
                    f"variable names under {scopes or 'the root'} contain '/part_' but {var_name} is not a "
                    f"partitioned variable, so no variable maps to tensor {full_tensor_name}"
                )
            restores += _restores_for(var, full_tensor_name, index, ckpt)
    store._record(restores)
