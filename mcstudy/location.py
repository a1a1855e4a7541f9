"""Where a results store lives, and the guarantee that one run at a time writes it.

A store is a local directory or an fsspec URL. A ``file://`` URL *is* a local path: it
is turned into one, so that a store has one identity however it is named. Two names of
one store — a relative path, an absolute one, a symbolic link, a ``file://`` URL — take
the same lock, because the lock is keyed by the store's resolved location.

- **Local stores** are locked with ``flock`` on a file beside the resolved store. The
  kernel drops the lock when its process dies, however it dies (SIGKILL included).
- **Object stores** (``s3://``, ``gs://``, ``az://``, …) have no ``flock``: a run holds a
  *lease*, an object beside the store (``<store>.mcstudy-lease``) with the holder's
  identity and an expiry ``LEASE_SECONDS`` ahead, renewed every third of that while the
  run lasts and deleted when it ends. A second run refuses a store whose lease is held
  and not expired. Two runs that start within the same instant both write their lease
  and read it back after ``LEASE_SETTLE_SECONDS``: the one that does not find its own
  identity stops. A run that died leaves its lease to expire: a resume is possible after
  at most ``LEASE_SECONDS``.

Every operation on a user's path or URL turns an ``OSError`` or a filesystem package's
error into a :class:`~mcstudy.errors.StoreError` naming the location.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import McStudyError, StoreError

LEASE_SECONDS = 120.0
LEASE_SETTLE_SECONDS = 1.0
READ_ONLY_PROTOCOLS = ("http", "https", "ftp", "github", "zip", "tar")
EPHEMERAL_PROTOCOLS = ("memory",)  # gone when the process ends

T = TypeVar("T")


def is_url(path: str | Path) -> bool:
    """An fsspec URL (``s3://bucket/x.zarr``, ``file:///...``) rather than a local path."""
    return "://" in str(path)


class Location:
    """A local directory or an fsspec URL (with its filesystem package installed, e.g.
    s3fs for ``s3://``)."""

    def __init__(self, path: str | Path) -> None:
        self.given = str(path)
        self.raw = self.given
        self.url = False
        if is_url(self.given):
            import fsspec

            try:
                fs, fs_path = fsspec.core.url_to_fs(self.given)
            except (ImportError, ValueError, OSError) as e:
                raise StoreError(f"cannot open store URL {self.given}: {e}") from None
            protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
            if {"file", "local"} & set(protocols):
                self.raw = fs_path  # a file:// URL is a local path: one identity, one lock
            else:
                self.url, self.fs, self.fs_path, self.protocol = True, fs, fs_path.rstrip("/"), protocols[0]

    def __str__(self) -> str:
        return self.given

    # -- identity ------------------------------------------------------------------
    @property
    def resolved(self) -> str:
        """The store's identity: the real path (links and ``..`` resolved) or the canonical URL."""
        if self.url:
            return str(self.fs.unstrip_protocol(self.fs_path))
        return os.path.realpath(os.path.expanduser(self.raw))

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """fsspec options for xarray/zarr."""
        return {} if self.url else None

    @property
    def target(self) -> str:
        """What xarray and zarr open: the URL, or the resolved local path."""
        return self.given if self.url else self.resolved

    # -- checks ------------------------------------------------------------------
    def check_writable(self, overwrite: bool = False) -> None:
        """Refuse, with a message, a location a run cannot write: a read-only protocol,
        a path under a regular file, a directory without write permission, a name too long
        for the filesystem, or (with ``overwrite``) a symbolic link to a store elsewhere."""
        if self.url:
            if self.protocol in READ_ONLY_PROTOCOLS:
                raise StoreError(f"--out {self.given}: {self.protocol}:// stores cannot be written; use a path or an object store URL (s3://, gs://, ...)")
            if self.protocol in EPHEMERAL_PROTOCOLS:
                raise StoreError(f"--out {self.given}: a {self.protocol}:// store vanishes when mcstudy exits; use a path or an object store URL")
            return
        path = Path(os.path.expanduser(self.raw))
        for part in path.parts:
            if len(os.fsencode(part)) > 255:
                raise StoreError(f"{self.given}: the name {part[:40]}... has {len(os.fsencode(part))} bytes; a file name may have at most 255")
        if overwrite and path.is_symlink():
            raise StoreError(
                f"{self.given} is a symbolic link to {os.path.realpath(path)}; mcstudy does not replace a store through a link "
                "(--overwrite): name the store itself"
            )
        real = Path(self.resolved)
        ancestor = real.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise StoreError(f"{self.given}: {ancestor} is a file, not a directory")
        if real.exists() and not real.is_dir():
            raise StoreError(f"{self.given} is a file, not a results store")
        if real.is_dir() and not (real / "zarr.json").is_file():
            raise StoreError(f"{self.given} exists and is not an mcstudy results store; choose another --out")
        writable = real if real.exists() else ancestor
        if not os.access(writable, os.W_OK | os.X_OK):
            raise StoreError(f"{self.given}: no permission to write in {writable}")

    # -- filesystem operations (errors name the location) ----------------------------
    def _op(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreError:
            raise
        except Exception as e:  # OSError, and each fsspec backend's own connection errors
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise StoreError(f"cannot {what} {self.given}: {reason}") from None

    def exists(self) -> bool:
        if self.url:
            return self._op("reach", lambda: bool(self.fs.exists(self.fs_path)))
        return os.path.lexists(os.path.expanduser(self.raw))

    def is_zarr(self) -> bool:
        if self.url:
            return self._op("read", lambda: bool(self.fs.exists(f"{self.fs_path}/zarr.json")))
        return (Path(self.resolved) / "zarr.json").is_file()

    def remove(self) -> None:
        if self.url:
            self._op("remove", lambda: self.fs.rm(self.fs_path, recursive=True))
        else:
            import shutil

            self._op("remove", lambda: shutil.rmtree(self.resolved))

    def lock_path(self) -> Path:
        """The local lock file: beside the resolved store."""
        real = Path(self.resolved)
        return real.parent / f".{real.name}.lock"

    def lease_path(self) -> str:
        return f"{self.fs_path}.mcstudy-lease"


class StoreLock:
    """One run per store, whatever its name: ``flock`` for a local store, a lease for an
    object store (module docstring)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._file: Any = None
        self._lease: Lease | None = None

    def __enter__(self) -> "StoreLock":
        if self.location.url:
            self._lease = Lease(self.location)
            self._lease.acquire()
            return self
        path = self.location.lock_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        except OSError as e:
            raise StoreError(f"cannot create the lock for {self.location} ({path}): {e.strerror or e}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreError(
                f"{self.location} is being written by another mcstudy run ({holder}); wait for it to finish, or write to another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{_holder_text()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.close()  # closing drops the flock
            self._file = None


def _holder_text() -> str:
    started = _dt.datetime.now().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}"


class Lease:
    """The object-store lease (module docstring): acquire, renew in the background, release."""

    def __init__(self, location: Location, seconds: float = LEASE_SECONDS, settle: float = LEASE_SETTLE_SECONDS) -> None:
        self.location, self.seconds, self.settle = location, seconds, settle
        self.id = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        loc = self.location
        if not loc._op("read the lease of", lambda: loc.fs.exists(loc.lease_path())):
            return None
        try:
            return json.loads(loc._op("read the lease of", lambda: loc.fs.cat_file(loc.lease_path())))
        except ValueError:
            return None  # a torn or foreign lease object: not a valid hold

    def _write(self) -> None:
        loc = self.location
        body = json.dumps({"holder": self.id, "who": _holder_text(), "expires": time.time() + self.seconds}).encode()
        loc._op("write the lease of", lambda: loc.fs.pipe_file(loc.lease_path(), body))

    def acquire(self) -> None:
        held = self._read()
        if held is not None and held.get("holder") != self.id and float(held.get("expires", 0)) > time.time():
            left = float(held["expires"]) - time.time()
            raise StoreError(
                f"{self.location} is being written by another mcstudy run ({held.get('who', 'unknown')}); its lease ends "
                f"in {left:.0f} s unless renewed. Wait for it to finish, or write to another --out"
            )
        self._write()
        time.sleep(self.settle)
        held = self._read()
        if held is None or held.get("holder") != self.id:
            raise StoreError(f"{self.location}: another mcstudy run took the store's lease at the same moment; it writes, this run stops")
        self._thread = threading.Thread(target=self._renew, name="mcstudy-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._write()
            except StoreError:
                pass  # the next renewal tries again; the lease lasts three intervals

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("holder") == self.id:
            loc = self.location
            loc._op("remove the lease of", lambda: loc.fs.rm_file(loc.lease_path()))


def inside_a_store(path: Path) -> Path | None:
    """The zarr store that ``path`` would be written into, if any."""
    for parent in path.resolve().parents:
        if (parent / "zarr.json").is_file():
            return parent
    return None


def output_file(path: Path, flag: str) -> Path:
    """A file the command may write: in an existing directory, not a directory, not a
    device, pipe or socket (replacing /dev/null would break the machine), and not inside
    a results store."""
    if str(path) == "":
        raise McStudyError(f"{flag} is empty; give a file name")
    if path.is_dir():
        raise McStudyError(f"{flag} {path} is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise McStudyError(f"{flag} {path} exists and is not a regular file (a device, pipe or socket); give a file name")
    if not path.parent.exists():
        raise McStudyError(f"{flag} {path}: the directory {path.parent} does not exist")
    store = inside_a_store(path)
    if store is not None:
        raise McStudyError(f"{flag} {path} is inside the results store {store}; write it elsewhere")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks: the identity of a data
    file, checkpoint or module a study names."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def study_relative(path: str, base_dir: Path | None) -> Path:
    """A path a study file names: ``~`` expanded, and a relative one taken from the study
    file's directory ``base_dir`` (where there is one), made absolute."""
    p = Path(path).expanduser()
    return (base_dir / p).resolve() if not p.is_absolute() and base_dir is not None else p


def pin_problem(what: str, digest: str | None, pinned: str | None) -> str | None:
    """Where a study pins a file's SHA-256 (``pinned``) and the file now has another
    (``digest``): the message saying so; else None."""
    if pinned is None or pinned == digest:
        return None
    return f"{what} has SHA-256 {digest}, not the {pinned} the study pins: the file changed"
