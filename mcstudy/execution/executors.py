"""Executors run work units and hand results back to the coordinator as they finish.

``serial`` runs in-process; ``local`` uses a pool of spawned processes, each holding
the payload once. Both give bit-identical numbers (see ``worker.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Iterable, Iterator

from ..registry import Registry
from .plan import WorkUnit
from .worker import Payload, UnitResult, WorkerContext


class Executor(ABC):
    def __init__(self, payload: Payload, workers: int) -> None:
        self.payload = payload
        self.workers = workers

    @abstractmethod
    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        """Results of ``units``, in completion order."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """One unit after another in this process."""

    def __init__(self, payload: Payload, workers: int = 1) -> None:
        super().__init__(payload, 1)
        self.context = WorkerContext(payload)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
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

    def __init__(self, payload: Payload, workers: int | None = None) -> None:
        super().__init__(payload, workers or os.cpu_count() or 1)
        self.pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(payload,)
        )

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
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
        self.pool.shutdown(wait=True, cancel_futures=True)
