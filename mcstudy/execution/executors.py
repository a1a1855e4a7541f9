"""Executors train the variants and run work units, handing results back to the
coordinator as they finish.

``serial`` runs in-process; ``local`` uses a pool of spawned processes, each holding the
payload once; ``ray`` (``ray_executor.py``) uses Ray actors on a cluster. All give
bit-identical numbers (see ``worker.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Iterable, Iterator

from ..data import Dataset
from ..registry import Registry
from ..training import TrainedModel, TrainJob, run_train_job
from .plan import WorkUnit
from .worker import Payload, UnitResult, WorkerContext


class Executor(ABC):
    """Lifecycle: ``train`` (optional) -> ``start(payload)`` -> ``run(units)`` -> ``close``."""

    name = "executor"

    def __init__(self, workers: int, address: str | None = None) -> None:
        """``address`` names a cluster; executors that run on this machine ignore it."""
        self.workers = workers

    def train(self, jobs: list[TrainJob], data: Dataset) -> list[TrainedModel]:
        """Train variants that are not cached (default: one after another, in this process)."""
        return [run_train_job(job, data) for job in jobs]

    @abstractmethod
    def start(self, payload: Payload) -> None:
        """Hand the payload to the workers, once."""

    @abstractmethod
    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        """Results of ``units``, in completion order."""

    def describe(self) -> str:
        return f"{self.name} × {self.workers}"

    def close(self) -> None:  # noqa: B027 (executors without resources need no cleanup)
        """Release workers and connections."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """One unit after another in this process."""

    name = "serial"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        super().__init__(1)
        self.context: WorkerContext | None = None

    def start(self, payload: Payload) -> None:
        self.context = WorkerContext(payload)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        assert self.context is not None, "start() first"
        for unit in units:
            yield self.context.run(unit)


_CONTEXT: WorkerContext | None = None


def _init_worker(payload: Payload) -> None:
    global _CONTEXT
    _CONTEXT = WorkerContext(payload)


def _run_unit(unit: WorkUnit) -> UnitResult:
    assert _CONTEXT is not None, "worker not initialised"
    return _CONTEXT.run(unit)


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """A pool of worker processes on this machine (spawned, so no state leaks from the parent)."""

    name = "local"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        super().__init__(workers or os.cpu_count() or 1)
        self.pool: ProcessPoolExecutor | None = None

    def start(self, payload: Payload) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(payload,)
        )

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        assert self.pool is not None, "start() first"
        pending: set[Future[UnitResult]] = set()
        todo = iter(units)
        limit = 2 * self.workers  # bounded in flight: memory does not grow with the study
        while True:
            for unit in todo:
                pending.add(self.pool.submit(_run_unit, unit))
                if len(pending) >= limit:
                    break
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                yield f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
