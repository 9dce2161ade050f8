"""distrestore: fast, parallel, verified restore of TensorFlow checkpoints, without TensorFlow.

Reader API with TensorFlow's names (``load_checkpoint``, ``list_variables``, ``load_variable``,
``latest_checkpoint``), parallel restore (``restore_tensors``, ``fetch``), writing
(``save_tensors``, ``merge_checkpoints``), name-based restore (``VariableStore``,
``init_from_checkpoint``) and object-based restore (``Checkpoint``, ``Node``). Every function
that takes a path accepts local paths and fsspec URLs (s3://, gs://, ...) with
``storage_options=``.
"""

from .errors import (
    AssignmentMapError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DistRestoreError,
    DTypeMismatchError,
    MergeConflictError,
    MismatchError,
    NoCheckpointInDirectoryError,
    RestoreAssertionError,
    ShapeMismatchError,
    StorageError,
    TensorNotFoundError,
    UnsupportedCheckpointError,
)
from .execute.threads import ThreadExecutor
from .format.object_graph import ObjectGraph, escape_local_name
from .index import CheckpointIndex, get_checkpoint_state, latest_checkpoint, open_checkpoint
from .objects import (
    Checkpoint,
    CheckpointLoadStatus,
    InitializationOnlyStatus,
    Node,
    NodeDict,
    NodeList,
    Optimizer,
    UnusedCheckpointValuesWarning,
    read_object_graph,
    tracked_children,
)
from .plan import PlanOptions, ReadPlan, ReadRequest
from .reader import CheckpointReader, list_variables, load_checkpoint, load_variable
from .restore import TensorRequest, fetch, iter_fetch, iter_restore_tensors, plan_requests, restore_tensors
from .variable import Variable
from .variable_store import PartitionedVariable, VariableStore, init_from_checkpoint
from .writer import merge_checkpoints, save_tensors

__version__ = "0.1.0"


def __getattr__(name):
    if name == "RayExecutor":  # importing it imports ray: only on demand
        from .execute.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'distrestore' has no attribute {name!r}")


__all__ = [
    "AssignmentMapError",
    "ChecksumMismatchError",
    "CheckpointIndex",
    "CheckpointNotFoundError",
    "CheckpointReader",
    "CorruptCheckpointError",
    "DistRestoreError",
    "DTypeMismatchError",
    "MergeConflictError",
    "MismatchError",
    "NoCheckpointInDirectoryError",
    "PlanOptions",
    "RayExecutor",
    "ReadPlan",
    "ReadRequest",
    "RestoreAssertionError",
    "ShapeMismatchError",
    "StorageError",
    "TensorNotFoundError",
    "TensorRequest",
    "ThreadExecutor",
    "UnsupportedCheckpointError",
    "Variable",
    "fetch",
    "get_checkpoint_state",
    "iter_fetch",
    "iter_restore_tensors",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "merge_checkpoints",
    "open_checkpoint",
    "plan_requests",
    "restore_tensors",
    "save_tensors",
    "PartitionedVariable",
    "VariableStore",
    "init_from_checkpoint",
    "Checkpoint",
    "CheckpointLoadStatus",
    "InitializationOnlyStatus",
    "Node",
    "NodeDict",
    "NodeList",
    "ObjectGraph",
    "Optimizer",
    "UnusedCheckpointValuesWarning",
    "escape_local_name",
    "read_object_graph",
    "tracked_children",
]
