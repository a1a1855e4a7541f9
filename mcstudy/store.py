"""The results store: one xarray Dataset per study on a zarr store (DESIGN.md "The store").

The coordinator alone writes. It creates the store from a template (metadata and
coordinates only; data chunks appear as blocks finish), writes each finished unit into
its region with xarray's own region writes, and only then marks the unit's chips done.
A rerun of the same study (same spec hash) resumes the units not done; a store of a
different study is refused unless the user asks to overwrite it.

| variable | dims |
|---|---|
| ``accuracy``, ``loss`` | variant, hardware, procedure, time, chip |
| ``done`` | variant, hardware, chip |
| ``float_accuracy``, ``float_loss`` | variant |
| per-chip draws (``between_z`` ...) | hardware, chip |
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import StoreError
from .procedures import METRIC_ATTRS, METRICS
from .spec import PHYSICS_VERSION, StudySpec, format_time

if TYPE_CHECKING:  # the store does not depend on how results were produced
    from .execution.plan import WorkUnit
    from .execution.worker import UnitResult

FORMAT_VERSION = 1
_PACKAGES = ("mcstudy", "torch", "numpy", "xarray", "zarr", "dask", "pydantic", "scikit-learn", "ray")

def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def template(
    spec: StudySpec,
    block_size: int,
    float_metrics: dict[str, dict[str, float]],
    draw_names: list[str],
    extra_attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """The study's dataset with every coordinate and attribute and lazy empty data."""
    V, H, P, T, C = len(spec.variants), len(spec.hardware), len(spec.procedures), len(spec.times), spec.chips
    b = min(block_size, C)
    dims5 = ("variant", "hardware", "procedure", "time", "chip")
    data_vars: dict[str, Any] = {}
    for m in spec.metrics:
        arr = da.full((V, H, P, T, C), np.nan, dtype=np.float32, chunks=(1, 1, P, T, b))
        data_vars[m] = xr.Variable(dims5, arr, attrs=METRIC_ATTRS[m])
    for m in METRICS:
        data_vars[f"float_{m}"] = xr.Variable(
            ("variant",),
            np.array([float_metrics[v.name][m] for v in spec.variants], dtype=np.float32),  # as the chips' metrics
            attrs={**METRIC_ATTRS[m], "long_name": f"float (digital) model's {METRIC_ATTRS[m]['long_name']}"},
        )
    data_vars["done"] = xr.Variable(
        ("variant", "hardware", "chip"),
        da.zeros((V, H, C), dtype=bool, chunks=(1, 1, b)),
        attrs={"long_name": "chip evaluated and written"},
    )
    for name in draw_names:
        data_vars[name] = xr.Variable(
            ("hardware", "chip"),
            da.full((H, C), np.nan, dtype=np.float32, chunks=(1, b)),
            attrs={"long_name": f"per-chip standard-normal draw of the {name.split('_')[0]}-chip variation"},
        )
    coords: dict[str, Any] = {
        "variant": ("variant", _strings([v.name for v in spec.variants])),
        "hardware": ("hardware", _strings([h.name for h in spec.hardware])),
        "procedure": ("procedure", _strings([p.name for p in spec.procedures])),
        "time": ("time", np.array(spec.times, dtype=np.float64), {"units": "s", "long_name": "time after programming"}),
        "chip": ("chip", np.arange(C, dtype=np.int64), {"long_name": "chip index within its population"}),
        "time_label": ("time", _strings([format_time(t) for t in spec.times])),
        "trainer": ("variant", _strings([v.trainer.name for v in spec.variants])),
        "population": ("hardware", _strings([h.base for h in spec.hardware])),
        "device": ("hardware", _strings([h.device.name for h in spec.hardware])),
        "mapping": ("hardware", _strings([h.mapping.name for h in spec.hardware])),
        "procedure_kind": ("procedure", _strings([p.kind.name for p in spec.procedures])),
        "weight_scale": ("hardware", _strings([h.weight_scale for h in spec.hardware]), {"long_name": "weight-to-conductance scale asked for"}),
        "weight_scale_used": (
            ("variant", "hardware"),
            np.array([[spec.scale_used(v, h) for h in spec.hardware] for v in spec.variants], dtype=object),
            {"long_name": "weight-to-conductance scale each variant was programmed with (trained, layer or tile)"},
        ),
    }
    for name, values in spec.variant_coords.items():
        coords[name] = ("variant", np.array(values, dtype=np.float64))
    for name, values in spec.hardware_coords.items():
        coords[name] = ("hardware", np.array(values, dtype=np.float64))
    attrs = {
        "title": f"mcstudy results: {spec.name}",
        "study_name": spec.name,
        "study_description": spec.description,
        "study_file": spec.source_text,
        "study_path": spec.source_path,
        "spec_hash": spec.hash,
        "spec_canonical": json.dumps(spec.canonical(), sort_keys=True),
        "seed": spec.seed,
        "block_size": b,
        "yield_within": spec.analysis.yield_within,
        "versions": json.dumps(package_versions(), sort_keys=True),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mcstudy_format": FORMAT_VERSION,
        **(extra_attrs or {}),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _physics_version(canonical: Any) -> int:
    """The physics version a store's study was computed with (1: before it was recorded)."""
    try:
        return int(json.loads(str(canonical)).get("physics", 1))
    except (ValueError, TypeError, AttributeError):
        return 1


def is_url(path: str | Path) -> bool:
    """An fsspec URL (``s3://bucket/x.zarr``, ``file:///...``) rather than a local path."""
    return "://" in str(path)


class Location:
    """Where a store lives: a local directory or an fsspec URL (with its filesystem
    package installed, e.g. s3fs for ``s3://``)."""

    def __init__(self, path: str | Path) -> None:
        self.raw = str(path)
        self.url = is_url(path)
        if self.url:
            import fsspec

            try:
                self.fs, self.fs_path = fsspec.core.url_to_fs(self.raw)
            except (ImportError, ValueError) as e:
                raise StoreError(f"cannot open store URL {self.raw}: {e}") from None

    def __str__(self) -> str:
        return self.raw

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """fsspec options for xarray/zarr (local ``file://`` URLs create their folders)."""
        if not self.url:
            return None
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return {"auto_mkdir": True} if protocol in ("file", "local") else {}

    def exists(self) -> bool:
        return self.fs.exists(self.fs_path) if self.url else Path(self.raw).exists()

    def is_zarr(self) -> bool:
        if self.url:
            return self.fs.exists(f"{self.fs_path}/zarr.json")
        return (Path(self.raw) / "zarr.json").is_file()

    def remove(self) -> None:
        if self.url:
            self.fs.rm(self.fs_path, recursive=True)
        else:
            shutil.rmtree(self.raw)

    def lock_path(self) -> Path:
        """A local lock file: beside a local store, or in the cache for a URL."""
        if self.url:
            from .training import default_cache_dir

            digest = hashlib.sha256(self.raw.encode()).hexdigest()[:24]
            return default_cache_dir() / "locks" / f"{digest}.lock"
        p = Path(self.raw)
        return p.parent / f".{p.name}.lock"


def _open(location: "Location") -> xr.Dataset:
    return xr.open_zarr(location.raw, consolidated=False, storage_options=location.storage_options)


def open_results(path: str | Path) -> xr.Dataset:
    """Open a study's results lazily as an xarray Dataset."""
    loc = Location(path)
    if not loc.exists():
        raise StoreError(f"no results store at {loc}")
    try:
        ds = _open(loc)
    except Exception as e:  # zarr raises several types for "not a store"
        raise StoreError(f"{loc} is not a readable zarr store: {e}") from None
    if "spec_hash" not in ds.attrs:
        raise StoreError(f"{loc} is a zarr store but not an mcstudy results store")
    return ds


class StoreLock:
    """One run per store: an exclusive ``flock`` on a lock file next to the store.

    The kernel releases the lock when its process ends, however it ends (SIGKILL
    included), so a killed run never leaves a lock that blocks the resume.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self.path = location.lock_path()
        self._file: Any = None

    def __enter__(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreError(
                f"{self.location} is being written by another mcstudy run ({holder}); "
                "wait for it to finish, or write to another --out"
            ) from None
        f.seek(0)
        f.truncate()
        started = _dt.datetime.now().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class ResultStore:
    """The coordinator's handle on a study's store."""

    def __init__(self, location: Location, block_size: int) -> None:
        self.location = location
        self.block_size = block_size

    @staticmethod
    def check(location: Location, spec: StudySpec, overwrite: bool) -> int | None:
        """Whether ``location`` can take this study: returns the block size of an existing
        store of the same study (to resume), None if a new store will be written; refuses
        a store of another study (unless ``overwrite``) and anything that is not a store."""
        if not location.exists():
            return None
        if not location.is_zarr():
            raise StoreError(f"{location} exists and is not an mcstudy results store; choose another --out")
        existing = open_results(location.raw)
        old = str(existing.attrs.get("spec_hash"))
        if old == spec.hash and not overwrite:
            return int(existing.attrs["block_size"])
        if not overwrite:
            physics = _physics_version(existing.attrs.get("spec_canonical"))
            if physics != PHYSICS_VERSION:
                raise StoreError(
                    f"{location} was written by an earlier version of mcstudy's models (physics version {physics}, this is "
                    f"{PHYSICS_VERSION}), whose numbers differ; choose another --out, or pass --overwrite to recompute it"
                )
            raise StoreError(
                f"{location} holds results of a different study (spec hash {old[:12]}…, this study {spec.hash[:12]}…); "
                "choose another --out, or pass --overwrite to replace it"
            )
        return None

    @classmethod
    def open_or_create(
        cls,
        location: Location,
        spec: StudySpec,
        block_size: int,
        float_metrics: dict[str, dict[str, float]],
        draw_names: list[str],
        overwrite: bool = False,
        extra_attrs: dict[str, Any] | None = None,
    ) -> tuple["ResultStore", bool]:
        """Open the store of this study to resume it, or create it. Returns ``(store, resumed)``.
        The caller holds the :class:`StoreLock`."""
        resume_block = cls.check(location, spec, overwrite)
        if resume_block is not None:
            return cls(location, resume_block), True
        if location.exists():
            location.remove()
        ds = template(spec, block_size, float_metrics, draw_names, extra_attrs)
        if location.url:
            ds.to_zarr(location.raw, mode="w-", compute=False, consolidated=False, storage_options=location.storage_options)
        else:  # build it aside and rename: a killed run never leaves half a template
            final = Path(location.raw)
            final.parent.mkdir(parents=True, exist_ok=True)
            for stale in final.parent.glob(f".{final.name}.creating-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".{final.name}.creating-{os.getpid()}"
            ds.to_zarr(tmp, mode="w-", compute=False, consolidated=False)
            os.rename(tmp, final)
        return cls(location, min(block_size, spec.chips)), False

    def done_mask(self) -> np.ndarray:
        """``(variant, hardware, chip)`` booleans."""
        return _open(self.location)["done"].values

    def pending(self, plan: list[WorkUnit]) -> list[WorkUnit]:
        done = self.done_mask()
        return [u for u in plan if not done[u.variant, u.hardware, u.start : u.stop].all()]

    def write(self, result: UnitResult) -> None:
        """Write a finished unit into its region, then mark its chips done."""
        u = result.unit
        region = {"variant": slice(u.variant, u.variant + 1), "hardware": slice(u.hardware, u.hardware + 1), "chip": slice(u.start, u.stop)}
        dims5 = ("variant", "hardware", "procedure", "time", "chip")
        block = xr.Dataset({m: (dims5, v[None, None].astype(np.float32)) for m, v in result.metrics.items()})
        opts = dict(region=region, consolidated=False, storage_options=self.location.storage_options)
        block.to_zarr(self.location.raw, **opts)
        marks: dict[str, Any] = {"done": (("variant", "hardware", "chip"), np.ones((1, 1, u.n_chips), dtype=bool))}
        for name, values in result.draws.items():
            marks[name] = (("hardware", "chip"), values[None].astype(np.float32))
        xr.Dataset(marks).to_zarr(self.location.raw, **opts)
