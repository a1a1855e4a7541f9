"""The results store: one xarray Dataset per study on a zarr store (README, How it works).

The coordinator alone writes. It creates the store from a template (metadata and
coordinates only; data chunks appear as blocks finish), writes each finished unit into
its region with xarray's own region writes, and only then marks the unit's chips done.
A rerun of the same study (same spec hash) resumes the units not done; a store of a
different study is refused unless the user asks to overwrite it.

| variable | dims |
|---|---|
| ``accuracy``, ``loss`` | variant, hardware, procedure, time, chip |
| ``done`` | variant, hardware, chip |
| ``float_accuracy``, ``float_loss`` (the trained network as its trainer computes it, digitally) | variant |
| per-chip draws (``between_z`` ...) | hardware, chip |
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
import os
import platform
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

import dask.array as da
import numpy as np
import xarray as xr

from .errors import McStudyError, StoreError
from .location import Location, StoreLock, is_url  # noqa: F401  (re-exported: the store API)
from .spec import StudySpec
from .times import format_time
from .vocabulary import METRIC_ATTRS, PHYSICS_VERSION, RESULT_DIMS, UNIT_DIMS
from .verify import FORMAT_VERSION, Damage, checksummed, repair, store_attrs, variables_attr, verify



class Region(Protocol):
    """The chips a unit of work covers: one variant, one population, chips [start, stop)."""

    variant: int
    hardware: int
    start: int
    stop: int

    @property
    def n_chips(self) -> int: ...


class Finished(Protocol):
    """A finished unit's per-chip results, as the store writes them (the store does not
    depend on how they were produced: ``execution.worker.UnitResult`` is one)."""

    unit: Region
    metrics: dict[str, np.ndarray]  # name -> (procedure, time, chip)
    draws: dict[str, np.ndarray]  # name -> (chip,)


R = TypeVar("R", bound=Region)

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
    data_vars: dict[str, Any] = {}
    attrs = {**METRIC_ATTRS, **spec.objective.attrs()}
    for m in spec.metrics:
        arr = da.full((V, H, P, T, C), np.nan, dtype=np.float32, chunks=(1, 1, P, T, b))
        data_vars[m] = xr.Variable(RESULT_DIMS, arr, attrs=attrs[m])
    for m in spec.objective.metrics:
        data_vars[f"float_{m}"] = xr.Variable(
            ("variant",),
            np.array([float_metrics[v.name][m] for v in spec.variants], dtype=np.float32),  # as the chips' metrics
            attrs={**attrs[m], "long_name": f"the trained network's {attrs[m]['long_name']}, computed digitally as its trainer's forward pass (its weight transfer and activation quantisation)"},
        )
    data_vars["done"] = xr.Variable(
        UNIT_DIMS,
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
        # a study that names its loss or metric: what the analysis leads with (default: accuracy)
        **({} if spec.objective.default else {"headline_metric": spec.objective.headline, "loss_name": spec.loss.name}),
        **(extra_attrs or {}),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.attrs["mcstudy_variables"] = variables_attr(ds)
    return ds


def _physics_version(canonical: Any) -> int | None:
    """The physics version a store's study was computed with (1: before it was recorded;
    None: its description is unreadable)."""
    try:
        return int(json.loads(str(canonical)).get("physics", 1))
    except (ValueError, TypeError, AttributeError):
        return None


def _open(location: Location) -> xr.Dataset:
    with warnings.catch_warnings():  # zarr warns about what a damaged store lacks; mcstudy reports it itself
        warnings.simplefilter("ignore", UserWarning)
        return xr.open_zarr(location.target, consolidated=False, storage_options=location.storage_options)


def open_results(path: str | Path, check: bool = True) -> xr.Dataset:
    """Open a study's results lazily as an xarray Dataset. With ``check`` (the default), a
    store that lacks an array it was created with, or comes from a newer mcstudy, is
    refused rather than opened without it (``mcstudy verify`` checks every chunk too)."""
    loc = Location(path)
    if not loc.exists():
        raise StoreError(f"no results store at {loc}")
    try:
        ds = _open(loc)
    except Exception as e:  # zarr raises several types for "not a store"
        raise StoreError(f"{loc} is not a readable zarr store: {e}") from None
    if "spec_hash" not in ds.attrs:
        raise StoreError(f"{loc} is a zarr store but not an mcstudy results store")
    if check:
        fmt = ds.attrs.get("mcstudy_format")
        if isinstance(fmt, int) and fmt > FORMAT_VERSION:
            raise StoreError(f"{loc} was written by a newer mcstudy (store format {fmt}; this one reads {FORMAT_VERSION})")
        try:
            expected = json.loads(ds.attrs.get("mcstudy_variables", "{}"))
        except ValueError:
            raise StoreError(f"{loc}: the attribute mcstudy_variables is unreadable; run mcstudy verify {loc}") from None
        for key, kind in (("block_size", int), ("seed", int), ("yield_within", float), ("spec_hash", str)):
            value = ds.attrs.get(key)
            if not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool):
                raise StoreError(f"{loc} is damaged: its attribute {key!r} is {value!r}; run mcstudy verify {loc}")
        missing = sorted(set(expected) - set(ds.variables))
        if missing:
            raise StoreError(f"{loc} is damaged: array(s) missing: {', '.join(missing)}; run mcstudy verify {loc}")
    return ds


@dataclass(frozen=True)
class Resume:
    """An existing store of the same study: its block size, and what :func:`verify` found."""

    block_size: int
    damage: Damage


class ResultStore:
    """The coordinator's handle on a study's store."""

    def __init__(self, location: Location, block_size: int, replaces: Location | None = None) -> None:
        self.location = location
        self.block_size = block_size
        self.replaces = replaces  # a store this one takes the place of once its first unit is written

    def abandon(self) -> None:
        """A run that failed before its first unit: remove the new store built aside, so
        the old one (``--overwrite``) stays as it was."""
        if self.replaces is not None:
            shutil.rmtree(self.location.target, ignore_errors=True)

    def _take_its_place(self) -> None:
        """``--overwrite``: the old store stays until the new one holds a finished unit, so
        a run that fails before that (a diverged network, an interrupt) loses nothing."""
        if self.replaces is None:
            return
        final, aside = Path(self.replaces.target), Path(self.location.target)
        old = final.parent / f".{final.name}.replaced-{os.getpid()}"
        os.rename(final, old)
        os.rename(aside, final)
        shutil.rmtree(old, ignore_errors=True)
        self.location, self.replaces = self.replaces, None

    @staticmethod
    def check(location: Location, spec: StudySpec, overwrite: bool, repair: bool = False) -> Resume | None:
        """Whether ``location`` can take this study: an existing store of the same study to
        resume (verified first: a damaged store is refused unless ``repair``), or None if a
        new store will be written; refuses a store of another study (unless ``overwrite``)
        and anything that is not a store."""
        if not location.exists():
            if repair:
                raise StoreError(f"--repair: there is no store at {location} to repair")
            return None
        if not location.is_zarr():
            raise StoreError(f"{location} exists and is not an mcstudy results store; choose another --out")
        attrs = store_attrs(location)
        if "spec_hash" not in attrs:
            raise StoreError(f"{location} is a zarr store but not an mcstudy results store; choose another --out")
        old = str(attrs.get("spec_hash"))
        if old == spec.hash and not overwrite:
            damage = verify(location)
            if not damage.intact:
                names = ([v.name for v in spec.variants], [h.name for h in spec.hardware])
                found = "\n  ".join(damage.lines(names))
                if damage.fatal:
                    raise StoreError(f"{location} cannot be resumed:\n  {found}\nrecompute it with --overwrite")
                if not repair:
                    raise StoreError(f"{location} is damaged; it is not resumed over:\n  {found}\nrerun with --repair to recompute exactly the damaged units")
            block = damage.block_size or attrs.get("block_size")
            return Resume(int(block), damage)
        if repair:
            raise StoreError(f"--repair: {location} holds another study (spec hash {old[:12]}…); nothing to repair")
        if not overwrite:
            physics = _physics_version(attrs.get("spec_canonical"))
            if physics is None:
                raise StoreError(f"{location} is damaged: its study description (spec_canonical) is unreadable; run mcstudy verify {location}")
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
        resume: Resume | None = None,
    ) -> tuple["ResultStore", bool]:
        """Open the store of this study to resume it (``resume``: what :meth:`check` found;
        damage is repaired first), or create it. Returns ``(store, resumed)``. The caller
        holds the :class:`StoreLock`."""
        if resume is not None:
            if not resume.damage.intact:
                repair(location, resume.damage, template(spec, resume.block_size, float_metrics, draw_names, extra_attrs))
            return cls(location, resume.block_size), True
        ds = template(spec, block_size, float_metrics, draw_names, extra_attrs)
        encoding = checksummed(ds)
        block = min(block_size, spec.chips)
        if location.url:  # an object store has no rename: the old store goes first
            if location.exists():
                location.remove()
            ds.to_zarr(location.target, mode="w-", compute=False, consolidated=False, storage_options=location.storage_options, encoding=encoding, write_empty_chunks=True)
            return cls(location, block), False
        # built aside and renamed: a killed run never leaves half a template; an old store
        # (--overwrite) is replaced only once the new one holds a finished unit
        final = Path(location.target)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.creating-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.creating-{os.getpid()}"
        ds.to_zarr(tmp, mode="w-", compute=False, consolidated=False, encoding=encoding, write_empty_chunks=True)
        if location.exists():
            return cls(Location(tmp), block, replaces=location), False
        os.rename(tmp, final)
        return cls(location, block), False

    def done_mask(self) -> np.ndarray:
        """``(variant, hardware, chip)`` booleans."""
        return _open(self.location)["done"].values

    def pending(self, plan: list[R]) -> list[R]:
        done = self.done_mask()
        return [u for u in plan if not done[u.variant, u.hardware, u.start : u.stop].all()]

    def write(self, result: Finished) -> None:
        """Write a finished unit into its region, then mark its chips done."""
        u = result.unit
        region = {"variant": slice(u.variant, u.variant + 1), "hardware": slice(u.hardware, u.hardware + 1), "chip": slice(u.start, u.stop)}
        block = xr.Dataset({m: (RESULT_DIMS, v[None, None].astype(np.float32)) for m, v in result.metrics.items()})
        # every chunk of a finished unit is written, even all-NaN ones: verify() knows a missing chunk is damage
        opts = dict(region=region, consolidated=False, storage_options=self.location.storage_options, write_empty_chunks=True)
        block.to_zarr(self.location.target, **opts)
        marks: dict[str, Any] = {"done": (UNIT_DIMS, np.ones((1, 1, u.n_chips), dtype=bool))}
        for name, values in result.draws.items():
            marks[name] = (("hardware", "chip"), values[None].astype(np.float32))
        xr.Dataset(marks).to_zarr(self.location.target, **opts)
        self._take_its_place()


def store_names(ds: "object | None") -> tuple[list[str], list[str]] | None:
    """The store's variant and hardware names, for messages."""
    try:
        return list(map(str, ds["variant"].values)), list(map(str, ds["hardware"].values))  # type: ignore[index]
    except Exception:
        return None


def require_whole(store: str) -> None:
    """Refuse to read a damaged store (a missing chunk would read as NaN, silently)."""
    location = Location(store)
    if not location.exists():
        raise McStudyError(f"no results store at {store}")
    damage = verify(location)
    if not damage.intact:
        try:
            names = store_names(open_results(store, check=False))
        except McStudyError:
            names = None
        found = "\n  ".join(damage.lines(names))
        raise McStudyError(f"{store} is damaged; nothing was read from it:\n  {found}\nmcstudy verify {store} lists it; mcstudy run STUDY --out {store} --repair mends it")
