"""Executors train the variants and run work units, handing results back to the
coordinator as they finish.

``serial`` runs in-process; ``local`` uses a pool of spawned processes, each holding the
payload once; ``ray`` (``ray_executor.py``) uses Ray actors on a cluster. All give
bit-identical numbers (see ``worker.py``).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

from ..data import Dataset
from ..errors import McStudyError, WorkerError
from ..interrupts import ignore_interrupts
from ..registries import EXECUTORS  # noqa: F401  (re-exported where it always was)
from ..training import TrainedModel, TrainJob, run_train_job
from .plan import WorkUnit
from .worker import Payload, UnitResult, WorkerContext


class Executor(ABC):
    """Lifecycle: ``train`` (optional) -> ``start(payload)`` -> ``run(units)`` -> ``close``."""

    name = "executor"

    def __init__(self, workers: int, address: str | None = None, sources: tuple[str, ...] = ()) -> None:
        """``address`` names a cluster and ``sources`` the directories of the study's own
        Python modules (a model factory beside the study file) that every worker must
        import; executors that run on this machine ignore both."""
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

    def notes(self) -> list[str]:
        """What the user should know about how this executor runs (printed at the start of a run)."""
        return []

    def close(self, aborted: bool = False) -> None:  # noqa: B027 (executors without resources need no cleanup)
        """Release workers and connections; ``aborted`` (an error or an interrupt ended the
        run): stop them at once rather than letting running work finish."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(aborted=exc_type is not None)




@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """One unit after another in this process."""

    name = "serial"

    def __init__(self, workers: int = 1, address: str | None = None, sources: tuple[str, ...] = ()) -> None:
        super().__init__(1)
        self.context: WorkerContext | None = None

    def start(self, payload: Payload) -> None:
        self.context = WorkerContext(payload)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        assert self.context is not None, "start() first"
        for unit in units:
            yield self.context.run(unit)


_CONTEXT: tuple[str, WorkerContext] | None = None  # (payload file, the context built from it)


def _init_worker(coordinator: int) -> None:
    """A local worker ignores Ctrl-C (the coordinator, which gets it too, terminates its
    workers), leaves when its coordinator is gone however it died (SIGKILL, the OOM
    killer: a watch on its parent), and leaves without tearing the interpreter down: it
    holds nothing to save (results go back as they are made), and unloading PyTorch and
    the compiled kernels took ~0.8 s, which the coordinator spent waiting at the end of
    every run."""
    ignore_interrupts()
    atexit.register(_leave)
    if os.getppid() != coordinator:  # it died while this worker was starting
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(coordinator,), name="mcstudy-parent-watch", daemon=True).start()


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """Exit at once when the coordinator that started this worker is gone (it was
    re-parented): an orphaned worker would otherwise hold its memory for ever."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _leave() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _ready() -> None:
    """A worker's first task: it returns once the process has started and imported mcstudy."""


def _run_unit(payload_file: str, unit: WorkUnit) -> UnitResult:
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT[0] != payload_file:
        with open(payload_file, "rb") as f:
            payload = pickle.load(f)  # written by this run's coordinator (LocalExecutor.start)
        _CONTEXT = (payload_file, WorkerContext(payload))
    return _CONTEXT[1].run(unit)


_PAYLOAD_PREFIX = "mcstudy-payload-"


def _remove_stale_payloads() -> None:
    """Payload files of runs that were killed (SIGKILL leaves no chance to clean up): each
    name holds its coordinator's pid, and a file whose process is gone is removed."""
    for f in Path(tempfile.gettempdir()).glob(f"{_PAYLOAD_PREFIX}*-*.pkl"):
        try:
            pid = int(f.name[len(_PAYLOAD_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


_WORKER_DIED = (
    "a local worker process exited (exit code {code}) before its work was done; the store keeps every "
    "finished chip and rerunning resumes. If you call mcstudy from a Python script, put the call under "
    '`if __name__ == "__main__":` - the local executor starts its workers by importing your script '
    "(multiprocessing's spawn)."
)


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """A pool of worker processes on this machine (spawned, so no state leaks from the parent)."""

    name = "local"

    watch_seconds = 2.0  # how often a run with nothing finished checks that its workers live

    max_per_cpu = 8  # more worker processes than this per core only thrash (each holds the payload)

    def __init__(self, workers: int | None = None, address: str | None = None, sources: tuple[str, ...] = ()) -> None:
        cpus = os.cpu_count() or 1
        if workers is not None and workers > self.max_per_cpu * cpus:
            raise McStudyError(
                f"--workers {workers}: the local executor runs at most {self.max_per_cpu * cpus} worker processes on this "
                f"machine's {cpus} cores; use --executor ray for more"
            )
        super().__init__(workers or cpus)
        self.pool: ProcessPoolExecutor | None = None
        self.payload_file: str | None = None
        self.broken = False
        self.started = False

    def __enter__(self) -> "LocalExecutor":
        self._spawn()  # the workers start (and import torch) while the coordinator prepares
        return self

    def _spawn(self) -> None:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
            )
            for _ in range(self.workers):  # a pool spawns one process per task submitted to no idle worker
                self.pool.submit(_ready)

    def start(self, payload: Payload) -> None:
        # The payload (trained models, data) goes to the workers through a temporary file,
        # not the spawn pipe: a worker that dies while it starts (e.g. a script without a
        # main guard) would otherwise leave the parent blocked for ever writing a payload
        # larger than the pipe's buffer (CPython's spawn keeps the pipe's read end open
        # until the write completes). Each worker reads it once, at its first unit.
        _remove_stale_payloads()
        fd, path = tempfile.mkstemp(prefix=f"{_PAYLOAD_PREFIX}{os.getpid()}-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        self.payload_file = path
        self.started = True
        self._spawn()

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        assert self.pool is not None and self.payload_file is not None, "start() first"
        pending: set[Future[UnitResult]] = set()
        todo = iter(units)
        limit = 2 * self.workers  # bounded in flight: memory does not grow with the study
        while True:
            for unit in todo:
                pending.add(self._submit(unit))
                if len(pending) >= limit:
                    break
            if not pending:
                return
            finished, pending = wait(pending, timeout=self.watch_seconds, return_when=FIRST_COMPLETED)
            if not finished:
                self._check_workers()
            for f in finished:
                try:
                    result = f.result()
                except BrokenProcessPool as e:
                    self.broken = True
                    raise WorkerError(_WORKER_DIED.format(code="unknown")) from e
                yield result

    def _submit(self, unit: WorkUnit) -> Future[UnitResult]:
        assert self.pool is not None and self.payload_file is not None
        try:
            return self.pool.submit(_run_unit, self.payload_file, unit)
        except BrokenProcessPool as e:  # a worker died before this unit was handed out
            self.broken = True
            raise WorkerError(_WORKER_DIED.format(code="unknown")) from e

    def _check_workers(self) -> None:
        """Raise if a worker process has exited: a pool worker only exits when the pool
        shuts down, and a worker that dies while it starts can leave the pool waiting
        forever instead of reporting it (seen with Python 3.11's ProcessPoolExecutor)."""
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        dead = [p for p in procs if p.exitcode is not None]
        if dead:
            self.broken = True
            raise WorkerError(_WORKER_DIED.format(code=dead[0].exitcode))

    def close(self, aborted: bool = False) -> None:
        try:
            if self.pool is not None:
                procs = list((getattr(self.pool, "_processes", None) or {}).values())
                if aborted or self.broken or not self.started:  # interrupted, lost a worker, or never needed: stop now
                    for p in procs:
                        p.terminate()
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    for p in procs:
                        p.join(timeout=5)
                        if p.is_alive():
                            p.kill()
                else:
                    self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None
        finally:
            if self.payload_file is not None:
                Path(self.payload_file).unlink(missing_ok=True)
                self.payload_file = None
