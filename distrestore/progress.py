"""Progress reporting for restores: a callback, a tqdm bar on a terminal, or log lines."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("distrestore")

ProgressCallback = Callable[[int, int, int, int], None]
"""Called as ``callback(bytes_done, bytes_total, tensors_done, tensors_total)``."""


class Progress:
    def __init__(
        self, bytes_total: int, tensors_total: int, callback: ProgressCallback | None = None, *, interval: float = 5.0
    ):
        self.bytes_total, self.tensors_total = bytes_total, tensors_total
        self.bytes_done = self.tensors_done = 0
        self.callback = callback
        self.interval = interval
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._bar = None
        if callback is None and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=bytes_total, unit="B", unit_scale=True, desc="restore")
            except ImportError:
                pass

    def advance(self, nbytes: int, tensors: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.tensors_done += tensors
            if self.callback is not None:
                self.callback(self.bytes_done, self.bytes_total, self.tensors_done, self.tensors_total)
            elif self._bar is not None:
                self._bar.update(nbytes)
            elif time.monotonic() - self._last >= self.interval or self.bytes_done == self.bytes_total:
                self._last = time.monotonic()
                log.info(
                    "restore: %d/%d bytes, %d/%d tensors",
                    self.bytes_done,
                    self.bytes_total,
                    self.tensors_done,
                    self.tensors_total,
                )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def make_progress(progress, bytes_total: int, tensors_total: int) -> Progress | None:
    """``progress``: None/False (off), True (tqdm on a terminal, else log lines), or a callback."""
    if not progress:
        return None
    return Progress(bytes_total, tensors_total, None if progress is True else progress)
