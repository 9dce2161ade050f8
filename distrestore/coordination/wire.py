"""What travels between a worker and the coordinator, in compact form.

A registration crosses a process boundary once per call, and registrations are small and many:
pickling a ``Registration`` (a NamedTuple of numpy arrays) costs more than deciding on it. On
the wire it is a plain tuple whose byte ranges are one ``bytes`` object (starts, then ends, as
little-endian int64), which pickles as a memcpy and unpacks with two ``np.frombuffer`` views.
"""

from __future__ import annotations

import numpy as np

from .ranges import Ranges, merge
from .state import Registration

_INT64 = np.dtype("<i8")


def pack(reg: Registration, timeout: float) -> tuple:
    """The wire form of ``reg`` with the seconds the coordinator gives it (``timeout``)."""
    need = np.concatenate([reg.need.start, reg.need.end]).astype(_INT64, copy=False)
    return (need.tobytes(), reg.node, bool(reg.verify), reg.group, reg.world_size, float(timeout))


def unpack(wire: tuple) -> tuple[Registration, float]:
    """``(registration, timeout)`` from ``pack``'s form. Raises ``ValueError`` on a malformed one."""
    need, node, verify, group, world_size, timeout = wire
    flat = np.frombuffer(need, _INT64)
    if len(flat) % 2:
        raise ValueError("a registration's ranges must hold as many starts as ends")
    n = len(flat) // 2
    ranges = Ranges(flat[:n].astype(np.int64), flat[n:].astype(np.int64))
    if n > 1 and not (ranges.start[1:] > ranges.end[:-1]).all() or (ranges.end <= ranges.start).any():
        ranges = merge(ranges)  # the coordinator relies on sorted, disjoint ranges
    return Registration(ranges, node, verify, group, world_size), float(timeout)
