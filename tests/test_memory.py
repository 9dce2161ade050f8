"""Destination memory (``distrestore.memory``): the huge-page rules read from a fake sysfs, and the
buffers themselves checked in this process's own memory map (``/proc/self/smaps``): mappings of
their own for large buffers, the advice each rule gives, unmapped when the last view dies, and
restored tensors that live in them."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

import distrestore as dr
from distrestore import memory
from distrestore.memory import MAPPED_MIN_BYTES, DestinationMemory, HugePagePolicy

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
MiB = 1 << 20


def fake_system(tmp_path, monkeypatch, *, enabled="madvise", defrag="madvise", features=None, order9=0, order10=0):
    thp = tmp_path / "thp"
    thp.mkdir()
    options = {
        "enabled": ["always", "madvise", "never"],
        "defrag": ["always", "defer", "defer+madvise", "madvise", "never"],
    }
    for name, value in (("enabled", enabled), ("defrag", defrag)):
        (thp / name).write_text(" ".join(f"[{o}]" if o == value else o for o in options[name]) + "\n")
    balloons = tmp_path / "balloon"
    balloons.mkdir()
    if features is not None:
        (balloons / "virtio0").mkdir()
        (balloons / "virtio0" / "features").write_text(features + "\n")
    buddy = tmp_path / "buddyinfo"
    buddy.write_text(
        "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3\n"
        f"Node 0, zone   Normal      1      2      2      3      2    142    109    170    759 {order9} {order10}\n"
    )
    monkeypatch.setattr(memory, "_THP", str(thp))
    monkeypatch.setattr(memory, "_BALLOONS", str(balloons))
    monkeypatch.setattr(memory, "_BUDDYINFO", str(buddy))


REPORTING = "0110010100000000"  # bit 5: VIRTIO_BALLOON_F_REPORTING
NOT_REPORTING = "0110000000000000"


@pytest.mark.parametrize(
    "settings, advise, budget",
    [
        ({"enabled": "never"}, "none", 0),
        ({"features": REPORTING}, "none", 0),
        ({"features": REPORTING, "enabled": "always"}, "no-huge", 0),
        ({"enabled": "always", "features": NOT_REPORTING}, "none", 0),
        ({"defrag": "defer"}, "huge", float("inf")),
        ({"defrag": "never"}, "huge", float("inf")),
        # stalling defrag: half of what the free blocks of order >= 9 hold (DMA: 1 x 2 MiB + 3 x 4 MiB)
        ({"defrag": "madvise", "order9": 10, "order10": 5}, "huge", (14 * MiB + 10 * 2 * MiB + 5 * 4 * MiB) // 2),
        ({"defrag": "defer+madvise", "features": NOT_REPORTING}, "huge", 14 * MiB // 2),
        ({"defrag": "always"}, "huge", 14 * MiB // 2),
    ],
)
def test_huge_page_rules(tmp_path, monkeypatch, settings, advise, budget):
    fake_system(tmp_path, monkeypatch, **settings)
    policy = memory.huge_page_policy()
    assert (policy.advise, policy.budget) == (advise, budget), policy.why


def test_no_sysfs_means_no_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_THP", str(tmp_path / "absent"))
    assert memory.huge_page_policy().advise == "none"


def _mapping_of(arr: np.ndarray) -> dict | None:
    """The /proc/self/smaps entry holding ``arr``'s first byte: its range and VmFlags."""
    addr = arr.ctypes.data
    entry = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                entry = {"lo": lo, "hi": hi} if lo <= addr < hi else None
            elif entry is not None and line.startswith("VmFlags:"):
                entry["flags"] = line.split()[1:]
                return entry
    return None


@linux
def test_small_buffers_are_numpy_memory():
    buf = DestinationMemory(HugePagePolicy("huge", float("inf"), "test")).empty(MAPPED_MIN_BYTES - 1)
    assert buf.flags.owndata and buf.nbytes == MAPPED_MIN_BYTES - 1


@linux
@pytest.mark.parametrize("advise, flag", [("huge", "hg"), ("no-huge", "nh"), ("none", None)])
def test_large_buffers_are_mappings_of_their_own_with_the_policys_advice(advise, flag):
    mem = DestinationMemory(HugePagePolicy(advise, float("inf"), "test"))
    buf = mem.empty(8 * MiB)
    assert buf.flags.writeable and buf.nbytes == 8 * MiB
    m = _mapping_of(buf)
    assert m is not None and m["hi"] - m["lo"] >= 8 * MiB
    assert buf.ctypes.data == m["lo"]  # its own mapping, from its first byte
    for f in ("hg", "nh"):
        assert (f in m["flags"]) == (f == flag), m["flags"]
    buf[:] = 7
    assert int(buf[::4096].sum()) == 7 * (8 * MiB // 4096)


@linux
def test_the_huge_page_budget_is_spent_then_no_advice():
    mem = DestinationMemory(HugePagePolicy("huge", 12 * MiB, "test"))
    first, second = mem.empty(8 * MiB), mem.empty(8 * MiB)
    assert "hg" in _mapping_of(first)["flags"]
    assert "hg" not in _mapping_of(second)["flags"]


@linux
def test_a_mapping_lives_while_any_view_does_and_is_unmapped_after():
    buf = DestinationMemory(HugePagePolicy("none", 0, "test")).empty(6 * MiB)
    addr = buf.ctypes.data
    view = buf[5 * MiB :].view(np.float32)[:10]  # a packed tensor: a view of its group's buffer
    del buf
    gc.collect()
    view[:] = 1.5
    assert _mapping_of(view) is not None and float(view.sum()) == 15.0
    del view
    gc.collect()
    with open("/proc/self/smaps") as f:
        ranges = [line.split()[0] for line in f if "-" in line.split()[0] and not line.split()[0].endswith(":")]
    assert not any(int(r.split("-")[0], 16) <= addr < int(r.split("-")[1], 16) for r in ranges)


@linux
def test_restored_large_tensors_live_in_destination_memory(tmp_path):
    tensors = {
        "big": np.arange(3 * MAPPED_MIN_BYTES // 4, dtype=np.float32).reshape(-1, 1024),
        "small": np.arange(12, dtype=np.int32),
    }
    prefix = dr.save_tensors(str(tmp_path / "ckpt"), tensors)
    out = dr.restore_tensors(prefix)
    assert np.array_equal(out["big"], tensors["big"]) and np.array_equal(out["small"], tensors["small"])
    base = out["big"]
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's hold on the mapping
        base = base.obj
    assert type(base).__name__ == "mmap"
    assert out["big"].flags.writeable and out["big"].flags.c_contiguous
