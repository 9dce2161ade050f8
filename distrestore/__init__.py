"""distrestore: fast, parallel, verified restore of TensorFlow checkpoints, without TensorFlow.

Reader API with TensorFlow's names (``load_checkpoint``, ``list_variables``, ``load_variable``,
``latest_checkpoint``), parallel restore (``restore_tensors``, ``fetch``), writing
(``save_tensors``, ``merge_checkpoints``), name-based restore (``VariableStore``,
``init_from_checkpoint``, TF's partitioners), object-based restore (``Checkpoint``, ``Node``, or
``load_object_tree`` without the model's code) and export (``save_npz``/``load_npz``,
``convert_to_safetensors``). Every function that takes a path accepts local paths and fsspec
URLs (s3://, gs://, ...) with ``storage_options=``.
On a Ray cluster: ``RayExecutor`` (one process's reads on read actors) and the restore service
(``serve``, ``connect``, ``ServiceClient``); importing distrestore does not import ray.
"""

from .errors import (
    AssignmentMapError,
    CheckpointNotFoundError,
    CheckpointPathError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DeadlineExceededError,
    DistRestoreError,
    DTypeMismatchError,
    GroupMismatchError,
    MergeConflictError,
    MismatchError,
    NoCheckpointInDirectoryError,
    RayNotInitializedError,
    RayPlacementError,
    ReadWorkerLostError,
    RestoreAssertionError,
    ServiceExistsError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    ShapeMismatchError,
    StorageError,
    TensorNotFoundError,
    UnsupportedCheckpointError,
)
from .execute.threads import ThreadExecutor
from .export.npz import load_npz, save_npz
from .export.to_safetensors import convert_to_safetensors
from .format.object_graph import ObjectGraph, escape_local_name
from .index import CheckpointIndex, get_checkpoint_state, latest_checkpoint, open_checkpoint
from .object_tree import load_object_tree
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
from .partitioners import fixed_size_partitioner, min_max_variable_partitioner, variable_axis_size_partitioner
from .plan import PlanOptions, ReadPlan, ReadRequest
from .reader import CheckpointReader, list_variables, load_checkpoint, load_variable
from .restore import TensorRequest, fetch, iter_fetch, iter_restore_tensors, plan_requests, restore_tensors
from .variable import Variable
from .variable_store import PartitionedVariable, VariableStore, init_from_checkpoint
from .writer import merge_checkpoints, save_tensors

__version__ = "0.1.0"

_RAY_NAMES = ("RayExecutor", "RayExecutorStats", "ServiceClient", "serve", "connect")


def __getattr__(name):
    if name in _RAY_NAMES:  # importing them imports ray: only on demand
        from . import ray as _ray

        return getattr(_ray, name)
    raise AttributeError(f"module 'distrestore' has no attribute {name!r}")


__all__ = [
    "AssignmentMapError",
    "ChecksumMismatchError",
    "CheckpointIndex",
    "CheckpointNotFoundError",
    "CheckpointPathError",
    "CheckpointReader",
    "CorruptCheckpointError",
    "DeadlineExceededError",
    "DistRestoreError",
    "DTypeMismatchError",
    "GroupMismatchError",
    "ServiceTimeoutError",
    "MergeConflictError",
    "MismatchError",
    "NoCheckpointInDirectoryError",
    "PlanOptions",
    "RayExecutor",
    "RayExecutorStats",
    "RayNotInitializedError",
    "RayPlacementError",
    "ReadWorkerLostError",
    "ReadPlan",
    "ReadRequest",
    "RestoreAssertionError",
    "ServiceClient",
    "ServiceExistsError",
    "ServiceUnavailableError",
    "ShapeMismatchError",
    "StorageError",
    "TensorNotFoundError",
    "TensorRequest",
    "ThreadExecutor",
    "UnsupportedCheckpointError",
    "Variable",
    "connect",
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
    "serve",
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
    "load_object_tree",
    "fixed_size_partitioner",
    "min_max_variable_partitioner",
    "variable_axis_size_partitioner",
    "load_npz",
    "save_npz",
    "convert_to_safetensors",
]
