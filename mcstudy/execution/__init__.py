"""Plan, coordinator and executors."""

from . import ray_executor  # noqa: F401  (registers the ray executor; imports ray lazily)
from .coordinator import RunOptions, RunReport, run_study
from .executors import EXECUTORS, Executor
from .plan import WorkUnit, make_plan
from .worker import Payload, UnitResult, WorkerContext

__all__ = [
    "EXECUTORS", "Executor", "Payload", "RunOptions", "RunReport", "UnitResult",
    "WorkUnit", "WorkerContext", "make_plan", "run_study",
]  # fmt: skip
