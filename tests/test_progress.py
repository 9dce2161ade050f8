"""Progress reporting (``distrestore.progress``): a callback, log lines off a terminal, nothing
when off; and a restore's progress reaching its totals from several threads."""

from __future__ import annotations

import logging
import threading

import numpy as np

import distrestore as dr
from distrestore.progress import Progress, make_progress


def test_off_unless_asked():
    assert make_progress(None, 10, 1) is None
    assert make_progress(False, 10, 1) is None


def test_callback_sees_running_totals():
    seen = []
    p = make_progress(lambda *a: seen.append(a), 100, 3)
    p.advance(40, 1)
    p.advance(60, 2)
    p.close()
    assert seen == [(40, 100, 1, 3), (100, 100, 3, 3)]


def test_log_lines_off_a_terminal(caplog):
    p = Progress(100, 2, interval=3600.0)  # pytest's stderr is no terminal: log lines, no bar
    with caplog.at_level(logging.INFO, logger="distrestore"):
        p.advance(50, 1)  # within the interval: quiet
        p.advance(50, 1)  # the end is always logged
    assert [r.getMessage() for r in caplog.records] == ["restore: 100/100 bytes, 2/2 tensors"]
    p.close()


def test_advance_from_many_threads_adds_up():
    seen = []
    p = Progress(8000, 800, lambda *a: seen.append(a))
    threads = [threading.Thread(target=lambda: [p.advance(10, 1) for _ in range(100)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (p.bytes_done, p.tensors_done) == (8000, 800)
    assert seen[-1] == (8000, 8000, 800, 800)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)  # reported in order, under the lock


def test_a_restore_reports_every_byte_and_tensor(tmp_path):
    tensors = {f"t{i}": np.full((i + 1, 100), i, np.float32) for i in range(20)}
    prefix = dr.save_tensors(str(tmp_path / "ckpt"), tensors)
    seen = []
    dr.restore_tensors(prefix, progress=lambda *a: seen.append(a))
    plan = dr.plan_requests([dr.TensorRequest(dr.open_checkpoint(prefix), n) for n in tensors])
    assert seen[-1] == (plan.bytes_to_read, plan.bytes_to_read, len(tensors), len(tensors))
