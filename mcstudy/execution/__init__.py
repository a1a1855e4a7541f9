"""Plan, coordinator and executors."""

from typing import TYPE_CHECKING, Any

from . import ray_executor  # noqa: F401  (registers the ray executor; imports ray lazily)
from .executors import EXECUTORS, Executor
from .plan import WorkUnit, make_plan
from .worker import Payload, UnitResult, WorkerContext

if TYPE_CHECKING:
    from .coordinator import RunOptions, RunReport, run_study

_COORDINATOR = ("RunOptions", "RunReport", "run_study")


def __getattr__(name: str) -> Any:
    """The coordinator on first use: worker processes import this package but never the
    coordinator's store stack (xarray, dask, zarr), which would slow every worker's start."""
    if name in _COORDINATOR:
        from . import coordinator

        return getattr(coordinator, name)
    raise AttributeError(f"module 'mcstudy.execution' has no attribute {name!r}")


__all__ = [
    "EXECUTORS", "Executor", "Payload", "RunOptions", "RunReport", "UnitResult",
    "WorkUnit", "WorkerContext", "make_plan", "run_study",
]  # fmt: skip
