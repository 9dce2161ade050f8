"""Storage: read byte ranges of local files or any fsspec URL into caller-given buffers.

``base.py`` is the interface (single attempts, implemented by each backend) and the retry policy
around them, written once; ``local.py`` and ``fsspec.py`` are the backends; ``paths.py`` joins
and splits paths and URLs; ``wrappers.py`` composes counting, latency and fault injection with any
backend (the tests and benchmarks use them); ``background.py`` asks a size while other work runs;
``streaming.py`` reads s3:// and gs:// ranges straight into their destination buffers;
``early.py`` asks for the head of a data file while its index is read.
"""

from ..errors import ShortReadError
from .base import PERMANENT, REFUSED, TRANSIENT, RetryPolicy, Storage, deadline_at, failure_kind, is_transient
from .fsspec import FsspecStorage
from .local import LocalStorage
from .paths import bucket_of, dirname, is_local, join, local_path, protocol_of

__all__ = [
    "PERMANENT",
    "REFUSED",
    "TRANSIENT",
    "FsspecStorage",
    "LocalStorage",
    "RetryPolicy",
    "ShortReadError",
    "Storage",
    "bucket_of",
    "deadline_at",
    "dirname",
    "failure_kind",
    "is_local",
    "is_transient",
    "join",
    "local_path",
    "protocol_of",
]
