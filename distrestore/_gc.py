"""``gc_paused``: no cyclic-GC passes while one phase builds 10^5 long-lived objects at once.

Each generation-0 pass that survives promotes objects, and full passes re-traverse everything
built so far: decoding an index or building a plan for 200,000 tensors would spend more time in
the GC than in the work. Nothing built there forms reference cycles, so pausing the collector
loses nothing.

The collector is process-wide, so the pause is kept to the phases that build objects (index
decoding, planning and the assembly's bookkeeping), never around I/O, where the user's other
threads would run without a collector for as long as a restore takes. Pauses nest and may
overlap across threads: the collector is re-enabled (if it was on before the first) when the
last one ends.
"""

import gc
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # pauses in progress, all threads together
_was_enabled = False  # the collector's state when the first of them began


@contextmanager
def gc_paused():
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
