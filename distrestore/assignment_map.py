"""``init_from_checkpoint``'s assignment maps, resolved with TF's rules into pending restores.

Pure decisions over a checkpoint's index and a store's variables by name; no reads. The rules
(TF 2.21 ``checkpoint_utils._init_from_checkpoint``) and where they differ from TF are in
``distrestore.variable_store``'s docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AssignmentMapError, ShapeMismatchError
from .format.slices import Box, box_shape
from .index import CheckpointIndex
from .partitioned import PartitionedVariable
from .variable import Variable

__all__ = ["PendingRestore", "resolve_assignment_map"]


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


def _collect_partitioned(name: str, all_vars: Mapping[str, Variable]) -> list[Variable] | None:
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


def resolve_assignment_map(
    assignment_map, index: CheckpointIndex, ckpt: str, variables: Mapping[str, Variable]
) -> list[PendingRestore]:
    """The pending restores ``assignment_map`` asks for, checked against ``index`` (named
    ``ckpt`` in messages) and resolved against ``variables`` (plain variables and parts by
    name, as a store holds them). Raises what TF raises for a bad map; records nothing.
    """
    variable_map = index.entries
    restores: list[PendingRestore] = []
    for tensor_name, current in _pairs(assignment_map):
        if isinstance(current, PartitionedVariable):
            var = list(current.parts)  # an extension: TF raises TypeError for a PartitionedVariable
        elif isinstance(current, Variable) or (isinstance(current, list) and _is_parts_list(current)):
            var = current
        elif isinstance(current, tuple) and _is_parts_list(current):
            var = list(current)
        elif isinstance(current, str):
            var = variables.get(current)
            if var is None:
                var = _collect_partitioned(current, variables)
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
        for var_name in variables:
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
            var = variables.get(var_name)
            if var is None:
                var = _collect_partitioned(var_name, variables)
            if var is None:
                # TF crashes here (AttributeError on None): a '/part_' name that is no partition
                raise AssignmentMapError(
                    f"variable names under {scopes or 'the root'} contain '/part_' but {var_name} is not a "
                    f"partitioned variable, so no variable maps to tensor {full_tensor_name}"
                )
            restores += _restores_for(var, full_tensor_name, index, ckpt)
    return restores
