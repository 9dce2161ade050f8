"""The dtype table (``distrestore.format.dtypes``) against TF.

Known values come from the bundle format notes (observed bytes of real TF output) and from the
committed TF fixtures; where TF is importable, encoders are also compared with TF's own classes.
"""

from __future__ import annotations

import numpy as np
import pytest
from format_support import tensorflow_or_skip

from distrestore.errors import UnsupportedCheckpointError
from distrestore.format import dtypes


def test_dtype_table_matches_tf():
    tf = tensorflow_or_skip()
    for enum, d in dtypes.BY_ENUM.items():
        tdt = tf.dtypes.as_dtype(enum)
        assert tdt.name == d.name, enum
        if d.fixed_width and not d.name.startswith("q"):
            assert np.dtype(tdt.as_numpy_dtype) == d.numpy, d.name


def test_dtype_from_numpy_and_resolve():
    import ml_dtypes

    assert dtypes.from_numpy(np.float32).enum == 1
    assert dtypes.from_numpy(">f4").enum == 1
    assert dtypes.from_numpy(ml_dtypes.bfloat16).name == "bfloat16"
    assert dtypes.from_numpy(np.int8).name == "int8"  # never a quantized type
    assert dtypes.from_numpy(object).is_string
    assert dtypes.resolve("half").enum == 19
    with pytest.raises(UnsupportedCheckpointError):
        dtypes.from_numpy(np.dtype("datetime64[s]"))
    with pytest.raises(UnsupportedCheckpointError, match="999"):
        dtypes.from_enum(999)
