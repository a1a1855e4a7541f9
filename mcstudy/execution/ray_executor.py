"""The Ray executor: the same study on a Ray cluster, with the same numbers.

Actors each receive the trained models and the data once, through the object store,
then take work units one at a time and return small result blocks; the coordinator on
the driver remains the store's only writer. Training variants run as parallel Ray
tasks. Fault tolerance is Ray's own: a lost actor (process or node) is restarted
(``max_restarts``) and its unit retried (``max_task_retries``); each unit's result
reaches the coordinator exactly once, so it is written exactly once.

A cluster mcstudy starts itself (``--address local``, the default) runs with Ray's
token authentication on, with the node address 127.0.0.1 and without the dashboard.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any, Iterable, Iterator

# Ray reads its authentication mode when it is imported: keep token authentication on
# for every cluster mcstudy starts or joins (a user's explicit setting wins).
os.environ.setdefault("RAY_AUTH_MODE", "token")

from ..data import Dataset  # noqa: E402
from ..errors import McStudyError  # noqa: E402
from ..training import TrainedModel, TrainJob, run_train_job  # noqa: E402
from .executors import EXECUTORS, Executor  # noqa: E402
from .plan import WorkUnit  # noqa: E402
from .worker import Payload, UnitResult, WorkerContext  # noqa: E402


class _UnitWorker:
    """A Ray actor holding the payload once.

    The payload's ObjectRef travels inside a list with every unit, so Ray does not fetch
    it per call; the actor fetches it on its first unit, and again after a restart (the
    driver owns the object for the whole run).
    """

    def __init__(self) -> None:
        self.context: WorkerContext | None = None

    def run(self, unit: WorkUnit, payload_box: list[Any]) -> UnitResult:
        import ray

        if self.context is None:
            self.context = WorkerContext(ray.get(payload_box[0]))
        return self.context.run(unit)


@lru_cache(maxsize=1)
def _remotes() -> tuple[Any, Any]:
    import ray

    worker = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(_UnitWorker)
    train = ray.remote(num_cpus=1, max_retries=3)(run_train_job)
    return worker, train


def ensure_ray(address: str | None, workers: int | None) -> bool:
    """Connect to (or start) Ray; returns whether this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address in (None, "local"):
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=True,
            **quiet,  # type: ignore[arg-type]
        )
    else:
        try:
            ray.init(address=address, **quiet)  # type: ignore[arg-type]
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise McStudyError(f"cannot connect to the Ray cluster at {address!r}: {e}") from None
    return True


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray actors on a cluster (or a local Ray instance)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        import ray

        self._owns = ensure_ray(address, workers)
        n = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        super().__init__(n, address)
        self.actors: list[Any] = []
        self._payload_ref: Any = None

    def train(self, jobs: list[TrainJob], data: Dataset) -> list[TrainedModel]:
        import ray

        if not jobs:
            return []
        _, train = _remotes()
        data_ref = ray.put(data)
        return ray.get([train.remote(job, data_ref) for job in jobs])

    def start(self, payload: Payload) -> None:
        import ray

        worker, _ = _remotes()
        self._payload_ref = ray.put(payload)
        self.actors = [worker.remote() for _ in range(self.workers)]

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        import ray

        idle = list(self.actors)
        in_flight: dict[Any, Any] = {}
        todo = iter(units)
        while True:
            while idle:
                unit = next(todo, None)
                if unit is None:
                    break
                actor = idle.pop()
                in_flight[actor.run.remote(unit, [self._payload_ref])] = actor
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                idle.append(in_flight.pop(ref))
                yield ray.get(ref)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        self._payload_ref = None
        if self._owns:
            ray.shutdown()
