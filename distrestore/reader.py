"""TensorFlow's reader API without TensorFlow: ``load_checkpoint``, ``list_variables``,
``load_variable`` and ``CheckpointReader`` (``checkpoint_utils.py`` / ``py_checkpoint_reader``).

The index is read once when the reader is made; ``get_tensor`` and ``get_slice`` read only the
bytes of what they return (in parallel for big tensors), verifying checksums. A reader made with
``timeout=``/``deadline=`` applies them to each of its reading methods (the deadline per call).
"""

from __future__ import annotations

import numpy as np

from ._gc import gc_paused
from .errors import UnsupportedCheckpointError
from .format.checks import check_stored_size
from .format.strings import decode_variants
from .index import CheckpointIndex, open_index
from .redact import redact_url
from .restore import TensorRequest, fetch, left_of
from .storage import deadline_at


class CheckpointReader:
    """Reads one checkpoint: what TF's ``tf.train.load_checkpoint`` returns."""

    def __init__(self, index: CheckpointIndex, *, timeout: float | None = None, deadline: float | None = None):
        self.index = index
        self.timeout = timeout
        self.deadline = deadline

    def _fetch(self, request: TensorRequest):
        (arr,) = fetch([request], timeout=self.timeout, deadline=self.deadline)
        return arr

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
        arr = self._fetch(TensorRequest(self.index, name))
        return arr[()] if arr.ndim == 0 else arr

    def get_slice(self, name: str, region) -> np.ndarray:
        """A region of a tensor (tuple of step-1 slices), reading only the bytes it needs."""
        if not isinstance(region, tuple):
            region = (region,)
        return self._fetch(TensorRequest(self.index, name, region))

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
        storage = self.index.storage.limited(timeout=self.timeout, deadline_at=deadline_at(self.deadline))
        self.index.with_storage(storage).check_location(entry)
        data = storage.read(file, entry.offset, entry.offset + entry.size)
        return decode_variants(data, entry.num_elements, entry.shape, stored_crc=entry.crc32c, where=where)

    def debug_string(self) -> str:
        return "\n".join(f"{n} ({e.dtype.name}) {list(e.shape)}" for n, e in self.index.entries.items())

    def __repr__(self) -> str:
        return f"CheckpointReader({redact_url(self.prefix)!r})"


def load_checkpoint(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> CheckpointReader:
    """A reader for a checkpoint prefix or a directory (its latest checkpoint). ``timeout``:
    seconds a request may stall before it is retried; ``deadline``: seconds for opening, and
    again for each reading call of the reader."""
    index = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=deadline_at(deadline))
    return CheckpointReader(index, timeout=timeout, deadline=deadline)


def list_variables(
    ckpt_dir_or_file,
    *,
    storage_options: dict | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> list[tuple[str, list[int]]]:
    """``[(name, shape), ...]`` sorted by name, like ``tf.train.list_variables``."""
    reader = load_checkpoint(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, deadline=deadline)
    cols = reader.index.columns()  # names are distinct: the pairs sort by name alone
    with gc_paused():
        listing = list(zip(cols.names, map(list, cols.shapes)))
        listing.sort()
    return listing


def load_variable(
    ckpt_dir_or_file,
    name: str,
    *,
    storage_options: dict | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
):
    """One tensor's value; one trailing ``":0"`` is stripped from ``name``, like TF. ``deadline``
    covers opening and reading together."""
    if name.endswith(":0"):
        name = name[:-2]
    at = deadline_at(deadline)
    index = open_index(ckpt_dir_or_file, storage_options=storage_options, timeout=timeout, at=at)
    return CheckpointReader(index, **left_of(timeout, at)).get_tensor(name)  # what opening left
