"""``gc_paused``: no cyclic-GC passes while building 10^5 long-lived objects at once.

Each generation-0 pass that survives promotes objects, and full passes re-traverse everything
built so far: building an index or a plan for 200,000 tensors would spend more time in the GC
than in the work. Nothing built here forms reference cycles, so pausing the collector loses
nothing; it is re-enabled (if it was on) when the block ends.
"""

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
