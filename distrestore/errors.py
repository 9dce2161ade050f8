"""The package's error types.

Every error distrestore raises derives from :class:`DistRestoreError` *and* from the stdlib class a
user already catches: ``FileNotFoundError`` for missing files, ``KeyError`` for names a reader does
not find, ``ValueError`` for corrupt data, bad maps and mismatches, ``OSError`` for storage
failures and ``AssertionError`` for status assertions. Messages name the file, tensor and byte range
where they are known.
"""

from __future__ import annotations

from .redact import redact_url


class DistRestoreError(Exception):
    """Base class of every error raised by distrestore. URL user-info (``https://user:pass@``)
    never reaches a message: it is masked when the error is made."""

    def __init__(self, *args):
        super().__init__(*(redact_url(a) if isinstance(a, str) else a for a in args))


class CheckpointNotFoundError(DistRestoreError, FileNotFoundError):
    """A checkpoint, its index or one of its data files does not exist."""

    def __str__(self) -> str:  # FileNotFoundError formats errno/filename; keep our message
        return str(self.args[0]) if self.args else ""


class TensorNotFoundError(DistRestoreError, KeyError):
    """A tensor name is not in the checkpoint (TF's ``NotFoundError: Key X not found``)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class CorruptCheckpointError(DistRestoreError, ValueError):
    """Checkpoint bytes that cannot be right: bad magic, truncation, bad sizes (TF's DataLoss)."""


class ChecksumMismatchError(CorruptCheckpointError):
    """A CRC32C stored in the checkpoint does not match the bytes read."""


class UnsupportedCheckpointError(DistRestoreError, ValueError):
    """A well-formed checkpoint feature distrestore does not read (V1 format, variant as numpy, ...)."""


class StorageError(DistRestoreError, OSError):
    """Reading from storage failed after retries (or with a permanent error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeadlineExceededError(StorageError, TimeoutError):
    """The call's ``deadline=`` passed before its reads finished (names the file, range and tensors)."""


class ShortReadError(StorageError):
    """Storage returned fewer bytes than asked for: retried, like any transient failure."""


class CheckpointPathError(DistRestoreError, ValueError):
    """A ``checkpoint`` state file names a path outside its directory's filesystem or bucket."""


class MismatchError(DistRestoreError, ValueError):
    """A value does not fit where it should go: the base of shape and dtype mismatches.

    Catch this one to handle both; :class:`ShapeMismatchError` alone no longer covers a dtype
    mismatch (before 0.2 it did, under that name)."""


class ShapeMismatchError(MismatchError):
    """A checkpoint value's shape does not fit the variable it should restore (or a variable of
    that name exists with another shape)."""


class DTypeMismatchError(MismatchError):
    """A checkpoint value's dtype does not fit the variable it should restore (or a variable of
    that name exists with another dtype)."""


class NoCheckpointInDirectoryError(CheckpointNotFoundError, ValueError):
    """A directory without a usable ``checkpoint`` state file (TF raises ValueError here)."""


class MergeConflictError(DistRestoreError, ValueError):
    """The checkpoints to merge disagree: a duplicate key, or different versions or dtypes."""


class AssignmentMapError(DistRestoreError, ValueError):
    """An ``init_from_checkpoint`` assignment map that TF would reject."""


class RestoreAssertionError(DistRestoreError, AssertionError):
    """A restore status assertion failed (``assert_consumed`` and friends)."""


# -- Ray: the executor and the restore service ---------------------------------------------------


class RayNotInitializedError(DistRestoreError, ConnectionError):
    """Ray is needed and this process is not connected to a Ray cluster (call ``ray.init``)."""


class RayPlacementError(DistRestoreError, ValueError):
    """No Ray read worker can be placed or started where the executor's options allow."""


class ReadWorkerLostError(StorageError):
    """A Ray read worker (or its node) died while reading, past its restarts."""


class ServiceUnavailableError(DistRestoreError, ConnectionError):
    """The restore service named in the message is not running, or died while it was needed."""


class ServiceExistsError(DistRestoreError, ValueError):
    """A restore service of that name already runs in that Ray namespace."""


class ServiceTimeoutError(DistRestoreError, TimeoutError):
    """A service group did not reach its ``world_size`` registrations in time, or a service call
    did not finish within its timeout."""


class GroupMismatchError(DistRestoreError, ValueError):
    """Members of one service group disagree (``world_size`` or ``verify``)."""
