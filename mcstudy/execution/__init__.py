"""Plan, coordinator and executors."""

from .coordinator import RunOptions, RunReport, run_study
from .executors import EXECUTORS, Executor
from .plan import WorkUnit, make_plan
from .worker import Payload, UnitResult, WorkerContext

__all__ = [
    "EXECUTORS", "Executor", "Payload", "RunOptions", "RunReport", "UnitResult",
    "WorkUnit", "WorkerContext", "make_plan", "run_study",
]  # fmt: skip
