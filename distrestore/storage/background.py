"""A file's size, asked in a thread now and taken later: a round trip that overlaps another.

Opening a remote checkpoint reads its index (one GET), and planning then needs every data file's
size before it trusts an entry (docs/hostile-input.md), one more round trip each. Most
checkpoints have a single data file whose name the prefix alone gives, so ``index.py`` asks its
size here while the index is read, and uses the answer only if the index names that file alone.
"""

from __future__ import annotations

import threading

from .base import Storage


class BackgroundSize:
    """``storage.size(url)``, started now in a daemon thread. ``result()`` waits for it (as long
    as the storage's timeout and deadline let the query run) and returns the size, or None when
    the query failed: the caller asks again where the size is needed, and reports that error."""

    def __init__(self, storage: Storage, url: str):
        self.url = url
        self._size: int | None = None
        self._thread = threading.Thread(target=self._ask, args=(storage,), daemon=True, name="distrestore-size")
        self._thread.start()

    def _ask(self, storage: Storage) -> None:
        try:
            self._size = storage.size(self.url)
        except Exception:  # asked again where it is needed, and its error reported there
            pass

    def result(self) -> int | None:
        self._thread.join()
        return self._size
