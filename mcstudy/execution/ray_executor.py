"""The Ray executor: the same study on a Ray cluster, with the same numbers.

Actors each receive the trained models and the data once, through the object store,
then take work units one at a time and return small result blocks; the coordinator on
the driver remains the store's only writer. Training variants run as parallel Ray
tasks. Fault tolerance is Ray's own: a lost actor (process or node) is restarted
(``max_restarts``) and its unit retried (``max_task_retries``); each unit's result
reaches the coordinator exactly once, so it is written exactly once.

A Ray instance mcstudy starts itself (``--address local``, the default) is private to
this machine and this user (:class:`LocalRay`): every Ray server binds 127.0.0.1 only
(Ray's ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` mode; ``_node_ip_address`` alone is
rewritten to the routable address on Linux), there is no dashboard and no metrics
export, token authentication is on with a fresh token in a 0600 file inside a 0700
directory (unless ``RAY_AUTH_TOKEN`` is set), Ray's session files live in that directory
under umask 077, and the directory is removed when the instance shuts down. The
directory is under ``TMPDIR`` where Ray's unix socket paths fit the kernel's limit there,
else under ``/tmp`` (:func:`private_dir`); Ray keeps all its session files there (sockets,
logs, and objects it spills, which for mcstudy's payloads and result blocks are small). Joining a
cluster (``--address HOST:PORT``) fails within :data:`CONNECT_SECONDS` when nothing
answers there: a TCP check first, then one bounded connection attempt.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from functools import lru_cache
from typing import Any, Iterable, Iterator

# Ray reads its authentication mode and its connection timeouts when it is imported: keep
# token authentication on for every cluster mcstudy starts or joins, and bound a join
# (CONNECT_SECONDS); a user's explicit setting wins.
os.environ.setdefault("RAY_AUTH_MODE", "token")
_JOIN_ENV = {"RAY_gcs_rpc_server_connect_timeout_s": "5", "RAY_py_gcs_connect_timeout_s": "10", "RAY_NUM_REDIS_GET_RETRIES": "1"}
for _key, _value in _JOIN_ENV.items():
    os.environ.setdefault(_key, _value)

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


CONNECT_SECONDS = 30.0
"""An unreachable ``--address`` fails within about this long: a 5 s TCP check, then one
connection attempt of at most 5 + 5 + 10 s (Ray's GCS channel, its pub-sub channel and
the cluster-id fetch: RAY_gcs_rpc_server_connect_timeout_s, RAY_py_gcs_connect_timeout_s,
RAY_NUM_REDIS_GET_RETRIES, set when this module is imported — before Ray — unless set)."""


_TOKEN: list[str] = []


def _process_token() -> str:
    """One token per process: Ray's driver keeps the first token it loads, so a second
    instance started in the same process (a notebook's second run) must use the same."""
    if not _TOKEN:
        _TOKEN.append(os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32))
    return _TOKEN[0]


# An AF_UNIX socket path holds at most 107 bytes on Linux (108 with its NUL), 103 on macOS,
# and Ray puts its sockets in <its temp dir>/session_<date>_<µs>_<pid>/sockets/: a private
# directory must leave room for the longest of them (a pid of 7 digits, a ".NN" suffix).
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
RAY_TEMP = "r"  # Ray's temp dir inside the private directory (short: every byte counts)
RAY_SOCKET_TAIL = f"/{RAY_TEMP}/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99"
FALLBACK_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def private_dir() -> tuple[str, str | None]:
    """A new 0700 directory for a private local Ray instance whose socket paths fit the
    kernel's limit — under ``TMPDIR`` (``tempfile.gettempdir()``) where they fit, else under
    the first of :data:`FALLBACK_TEMP_DIRS` where they do — and, where it is not under the
    ``TMPDIR`` the user set, a line saying why."""
    example = "mcstudy-ray-" + "x" * 8  # mkdtemp's name: the prefix and 8 characters
    tried = []
    asked = os.environ.get("TMPDIR")
    for base in dict.fromkeys([tempfile.gettempdir(), *FALLBACK_TEMP_DIRS]):
        length = len(os.fsencode(os.path.join(os.path.abspath(base), example) + RAY_SOCKET_TAIL))
        if length > SOCKET_PATH_MAX:
            tried.append(f"{base} (socket paths of {length} bytes)")
            continue
        try:
            made = tempfile.mkdtemp(prefix="mcstudy-ray-", dir=base)
        except OSError as e:
            tried.append(f"{base} ({e.strerror or e})")
            continue
        moved = asked and os.path.abspath(base) != os.path.abspath(asked)
        why = "is too long for Ray's unix socket paths" if os.path.isdir(asked or "") else "is not a directory"
        return made, (f"Ray's session files are in {made}: TMPDIR {asked} {why}" if moved else None)
    raise McStudyError(
        f"no directory for a local Ray instance's unix sockets (at most {SOCKET_PATH_MAX} bytes each): tried "
        + ", ".join(tried) + "; set TMPDIR to a short writable directory"
    )


class LocalRay:
    """A private local Ray instance (module docstring): started by :meth:`start`, removed
    with its files by :meth:`stop`."""

    def __init__(self) -> None:
        self.dir, self.note = private_dir()  # 0700; short enough for Ray's unix sockets whatever TMPDIR is
        self._saved: dict[str, str | None] = {}
        self._constants: dict[str, Any] = {}

    def _set_env(self, key: str, value: str) -> None:
        self._saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def start(self, workers: int | None, runtime_env: dict[str, Any] | None = None) -> None:
        import ray
        from ray._private import ray_constants

        self._set_env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every server on 127.0.0.1 (read by Ray's processes)
        self._set_env("RAY_USAGE_STATS_ENABLED", "0")
        self._set_env("RAY_NUM_REDIS_GET_RETRIES", "20")  # a starting GCS gets Ray's usual time; the bound is for joins
        for name, value in (("ENABLE_RAY_CLUSTER", False), ("NUM_REDIS_GET_RETRIES", 20)):
            self._constants[name] = getattr(ray_constants, name)
            setattr(ray_constants, name, value)  # this process may have imported ray before the variables were set
        if not os.environ.get("RAY_AUTH_TOKEN"):
            token = os.path.join(self.dir, "auth_token")
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_process_token())
            self._set_env("RAY_AUTH_TOKEN_PATH", token)  # Ray's processes read it while the instance lives
        umask = os.umask(0o077)  # Ray's session files, logs and sockets: this user's only
        try:
            ray.init(
                address="local",  # never join a cluster named by RAY_ADDRESS
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=os.path.join(self.dir, RAY_TEMP),
                _system_config={"enable_metrics_collection": False},
                configure_logging=True,
                log_to_driver=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env,
            )
        except Exception:
            self.stop()
            raise
        finally:
            os.umask(umask)

    def stop(self) -> None:
        import ray
        from ray._private import ray_constants

        if ray.is_initialized():
            ray.shutdown()
        for key, value in self._constants.items():
            setattr(ray_constants, key, value)
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved, self._constants = {}, {}
        shutil.rmtree(self.dir, ignore_errors=True)


def _reachable(address: str) -> None:
    """A quick TCP check of ``HOST:PORT`` (refused ports and blackholes fail here, in 5 s at most)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # 'auto', ray:// client addresses: Ray's own lookup
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5.0).close()
    except (OSError, UnicodeError, ValueError) as e:  # refused, unreachable, or not a host name at all
        reason = getattr(e, "strerror", None) or str(e)
        raise McStudyError(f"cannot reach the Ray cluster at {address!r}: {reason} (a TCP check of 5 s at most)") from None


SHIP_EXCLUDES = [
    ".git/", "__pycache__/", ".venv/", "venv/", ".ipynb_checkpoints/", "results/", "*.zarr", "*.zarr/", "*.lock",
    "*.npz", "*.npy", "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.onnx", "*.bin", "*.parquet", "*.csv", "*.h5",
    "*.hdf5", "*.pkl", "*.pickle", "*.zip", "*.tar", "*.gz", "*.idx*-ubyte", "*.png", "*.jpg", "*.pdf",
]  # fmt: skip
"""Left out of the study directory Ray ships to the workers (besides what its
``.gitignore`` and ``.rayignore`` name): result stores, environments, data, checkpoints
and figures — the data reaches the workers through the object store and checkpoints are
read where the variant trains — so the upload holds the study's Python code."""


def runtime_env(sources: tuple[str, ...]) -> dict[str, Any] | None:
    """The job's runtime environment: the directory of the study's own modules as every
    worker's working directory (Ray uploads it once and puts it on the workers' Python
    path), and the variable that tells ``models.factory`` a worker imports from that copy."""
    if not sources:
        return None
    if len(sources) > 1:
        raise McStudyError(f"on Ray, the study's own modules must sit in one directory (one working directory per job), not {list(sources)}")
    from ..models.factory import SHIPPED_SOURCE

    return {"working_dir": sources[0], "excludes": SHIP_EXCLUDES, "env_vars": {SHIPPED_SOURCE: sources[0]}}


def ensure_ray(address: str | None, workers: int | None, sources: tuple[str, ...] = ()) -> LocalRay | bool:
    """Connect to (or start) Ray, shipping the study's own modules (:func:`runtime_env`).
    Returns the :class:`LocalRay` this call started, True when it joined a cluster, False
    when Ray was already connected (its job then must already reach the modules: the
    workers check the SHA-256 of what they import)."""
    if address not in (None, "local"):
        _reachable(address)
    import ray

    env = runtime_env(sources)
    if ray.is_initialized():
        return False
    if address in (None, "local"):
        local = LocalRay()
        local.start(workers, env)
        return local
    from ray._private import ray_constants

    retries, ray_constants.NUM_REDIS_GET_RETRIES = ray_constants.NUM_REDIS_GET_RETRIES, int(os.environ["RAY_NUM_REDIS_GET_RETRIES"])
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=env)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, TimeoutError, ValueError, …
        raise McStudyError(f"cannot connect to the Ray cluster at {address!r}: {e}") from None
    finally:
        ray_constants.NUM_REDIS_GET_RETRIES = retries
    return True


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray actors on a cluster (or a local Ray instance)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, sources: tuple[str, ...] = ()) -> None:
        self._owns = ensure_ray(address, workers, sources)  # a LocalRay to stop, True (joined: disconnect), or False
        import ray

        n = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        super().__init__(n, address)
        self.actors: list[Any] = []
        self._payload_ref: Any = None

    def notes(self) -> list[str]:
        note = self._owns.note if isinstance(self._owns, LocalRay) else None
        return [note] if note else []

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

    def close(self, aborted: bool = False) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        self._payload_ref = None
        if isinstance(self._owns, LocalRay):
            self._owns.stop()
        elif self._owns:
            ray.shutdown()
        self._owns = False
