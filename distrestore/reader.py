"""TensorFlow's reader API without TensorFlow: ``load_checkpoint``, ``list_variables``,
``load_variable`` and ``CheckpointReader`` (``checkpoint_utils.py`` / ``py_checkpoint_reader``).

The index is read once when the reader is made; ``get_tensor`` and ``get_slice`` read only the
bytes of what they return (in parallel for big tensors), verifying checksums.
"""

from __future__ import annotations

import numpy as np

from ._gc import gc_paused
from .errors import UnsupportedCheckpointError
from .format.checks import check_stored_size
from .format.strings import decode_variants
from .index import CheckpointIndex, open_checkpoint
from .restore import TensorRequest, fetch


class CheckpointReader:
    """Reads one checkpoint: what TF's ``tf.train.load_checkpoint`` returns."""

    def __init__(self, index: CheckpointIndex):
        self.index = index

    @property
    def prefix(self) -> str:
        return self.index.prefix

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return self.index.shape_map()

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        """Numpy dtypes: object for strings, ml_dtypes for bfloat16/float8/int4; quantized
        types as the integer type of the same width."""
        return self.index.dtype_map()

    def has_tensor(self, name: str) -> bool:
        return self.index.has_tensor(name)

    def get_tensor(self, name: str):
        """The value, like TF: an array; a numpy scalar for scalars; ``bytes`` for a scalar string;
        partitioned variables assembled."""
        entry = self.index.entry(name)
        if entry.dtype.is_variant:
            raise UnsupportedCheckpointError(
                f"tensor {name!r} in {self.prefix} is a DT_VARIANT (e.g. a tf.data iterator) and "
                "has no numpy value; use get_variant_records(name) for its raw records"
            )
        (arr,) = fetch([TensorRequest(self.index, name)])
        return arr[()] if arr.ndim == 0 else arr

    def get_slice(self, name: str, region) -> np.ndarray:
        """A region of a tensor (tuple of step-1 slices), reading only the bytes it needs."""
        if not isinstance(region, tuple):
            region = (region,)
        (arr,) = fetch([TensorRequest(self.index, name, region)])
        return arr

    def get_variant_records(self, name: str) -> np.ndarray:
        """A DT_VARIANT tensor's elements as serialized ``VariantTensorDataProto`` bytes."""
        entry = self.index.entry(name)
        if not entry.dtype.is_variant:
            raise ValueError(f"tensor {name!r} is {entry.dtype.name}, not a variant")
        file = self.index.data_file(entry.shard_id)
        where = f"tensor {name!r} in {file}"
        # the element count against the entry's bytes, the bytes against the file: nothing is
        # allocated from a claimed size (each record is then read by its own decoded length)
        check_stored_size(entry.dtype, entry.num_elements, entry.size, name, file)
        self.index.check_location(entry)
        data = self.index.storage.read(file, entry.offset, entry.offset + entry.size)
        return decode_variants(data, entry.num_elements, entry.shape, stored_crc=entry.crc32c, where=where)

    def debug_string(self) -> str:
        return "\n".join(f"{n} ({e.dtype.name}) {list(e.shape)}" for n, e in self.index.entries.items())

    def __repr__(self) -> str:
        return f"CheckpointReader({self.prefix!r})"


def load_checkpoint(ckpt_dir_or_file, *, storage_options: dict | None = None) -> CheckpointReader:
    """A reader for a checkpoint prefix or a directory (its latest checkpoint)."""
    return CheckpointReader(open_checkpoint(ckpt_dir_or_file, storage_options=storage_options))


def list_variables(ckpt_dir_or_file, *, storage_options: dict | None = None) -> list[tuple[str, list[int]]]:
    """``[(name, shape), ...]`` sorted by name, like ``tf.train.list_variables``."""
    shapes = load_checkpoint(ckpt_dir_or_file, storage_options=storage_options).get_variable_to_shape_map()
    with gc_paused():
        return sorted(shapes.items())


def load_variable(ckpt_dir_or_file, name: str, *, storage_options: dict | None = None):
    """One tensor's value; one trailing ``":0"`` is stripped from ``name``, like TF."""
    if name.endswith(":0"):
        name = name[:-2]
    return load_checkpoint(ckpt_dir_or_file, storage_options=storage_options).get_tensor(name)
