"""Where ``RayExecutor`` used to live: it is in ``distrestore.ray`` now (kept for old imports)."""

from ..errors import RayNotInitializedError, RayPlacementError, ReadWorkerLostError
from ..ray.executor import RayExecutor, RayExecutorStats

__all__ = ["RayExecutor", "RayExecutorStats", "RayNotInitializedError", "RayPlacementError", "ReadWorkerLostError"]
