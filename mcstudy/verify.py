"""Damage is detected, never resumed over (README, Crash safety).

Every array of a store is written with a CRC32C checksum on every chunk (zarr 3's
``crc32c`` codec) and every chunk of a finished unit is written, even one that holds only
fill values. :func:`verify` then checks, without trusting anything it reads:

- **metadata**: the store's attributes (format version, spec hash), every array the
  store was created with (``mcstudy_variables``: present, readable, with its shape), and
  the block size (the attribute against the arrays' chunking);
- **every finished unit** (``done``): each per-chip array has that unit's chunk, the chunk
  decodes (checksum) and its accuracy (or headline metric) and loss are finite.

It reports damaged metadata and damaged units. :func:`repair` recreates damaged arrays
from the study's template and marks damaged units not done, so that the run that follows
recomputes exactly those units — ending with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import StoreError
from .location import Location
from .vocabulary import UNIT_DIMS

FORMAT_VERSION = 2
"""2: every chunk checksummed (CRC32C) and written even when it holds only fill values."""

PER_CHIP = UNIT_DIMS  # the dims a unit's region spans


@dataclass(frozen=True)
class DamagedUnit:
    variant: int
    hardware: int
    start: int
    stop: int
    why: str


@dataclass
class Damage:
    """What :func:`verify` found. ``fatal``: problems repair cannot mend (the store must be
    recomputed with ``--overwrite``); ``arrays``: arrays to recreate; ``units``: finished
    units whose chunks are missing, corrupt or non-finite; ``block_size``: the block size
    the arrays are chunked with, where the attribute disagrees."""

    fatal: list[str] = field(default_factory=list)
    arrays: dict[str, str] = field(default_factory=dict)  # name -> why
    units: list[DamagedUnit] = field(default_factory=list)
    block_size: int | None = None
    units_checked: int = 0

    @property
    def intact(self) -> bool:
        return not (self.fatal or self.arrays or self.units or self.block_size is not None)

    def lines(self, names: tuple[list[str], list[str]] | None = None, most: int = 20) -> list[str]:
        """Human-readable findings (``names``: the store's variant and hardware names)."""
        out = [f"unrecoverable: {p}" for p in self.fatal]
        out += [f"array {name!r}: {why}" for name, why in sorted(self.arrays.items())]
        if self.block_size is not None:
            out.append(f"the block_size attribute disagrees with the arrays' chunks ({self.block_size} chips)")
        for u in self.units[:most]:
            v = names[0][u.variant] if names else u.variant
            h = names[1][u.hardware] if names else u.hardware
            out.append(f"unit {v} × {h} × chips {u.start}-{u.stop - 1}: {u.why}")
        if len(self.units) > most:
            out.append(f"... and {len(self.units) - most} more damaged units")
        return out


def checksummed(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """zarr encoding for every variable and coordinate of ``ds``: compressed, then a CRC32C
    checksum of each chunk."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {str(name): {"compressors": [ZstdCodec(level=1), Crc32cCodec()]} for name in ds.variables}


def variables_attr(ds: xr.Dataset) -> str:
    """The ``mcstudy_variables`` attribute: every array's dims and shape, as created."""
    return json.dumps({str(n): {"dims": list(v.dims), "shape": list(v.shape)} for n, v in ds.variables.items()}, sort_keys=True)


def _exists(location: Location, key: str) -> bool:
    if location.url:
        return bool(location._op("read", lambda: location.fs.exists(f"{location.fs_path}/{key}")))
    return os.path.isfile(Path(location.resolved) / key)


def store_attrs(location: Location) -> dict[str, Any]:
    """The store's attributes, read without opening any of its arrays (a damaged array
    must not hide which study the store holds)."""
    try:
        return dict(_root(location).attrs)
    except Exception as e:
        raise StoreError(f"{location} is not a readable zarr store ({type(e).__name__}: {e})") from None


def _root(location: Location, mode: str = "r") -> Any:
    import warnings

    import zarr

    with warnings.catch_warnings():  # zarr warns about what a damaged store lacks; verify reports it
        warnings.simplefilter("ignore", UserWarning)
        return zarr.open_group(location.target, mode=mode, **({"storage_options": location.storage_options} if location.url else {}))


def verify(location: Location) -> Damage:
    """Check a store's metadata and every finished unit (module docstring)."""
    damage = Damage()
    try:
        root = _root(location)
        attrs = dict(root.attrs)
    except Exception as e:
        damage.fatal.append(f"the store's metadata is unreadable ({type(e).__name__}: {e})")
        return damage
    fmt = attrs.get("mcstudy_format")
    if not isinstance(fmt, int) or "spec_hash" not in attrs:
        damage.fatal.append("the store's attributes are missing (mcstudy_format, spec_hash)")
        return damage
    if fmt > FORMAT_VERSION:
        damage.fatal.append(f"written by a newer mcstudy (store format {fmt}; this mcstudy reads {FORMAT_VERSION})")
        return damage
    if fmt < FORMAT_VERSION:
        damage.fatal.append(f"written by an older mcstudy (store format {fmt}, without checksums; this is {FORMAT_VERSION})")
        return damage
    try:
        expected: dict[str, dict[str, Any]] = json.loads(attrs["mcstudy_variables"])
    except (KeyError, TypeError, ValueError):
        damage.fatal.append("the attribute mcstudy_variables is missing or unreadable")
        return damage
    finite = {"accuracy", "loss", str(attrs.get("headline_metric", "accuracy"))}  # every chip's values are finite numbers
    arrays: dict[str, Any] = {}
    for name, meta in expected.items():
        try:
            arr = root[name]
        except Exception as e:
            damage.arrays[name] = f"missing or unreadable metadata ({type(e).__name__})"
            continue
        if list(arr.shape) != list(meta["shape"]):
            damage.arrays[name] = f"shape {list(arr.shape)}, created as {meta['shape']}"
            continue
        arrays[name] = arr
    for name, arr in arrays.items():  # arrays written whole at creation: coordinates, the float metrics
        if "chip" in expected[name]["dims"] and name != "chip":
            continue
        for coords in np.ndindex(*arr.cdata_shape):
            why = _chunk_problem(location, arr, f"{name}/{arr.metadata.encode_chunk_key(coords)}", coords, name in finite)
            if why is not None:
                damage.arrays[name] = why
                break
    if "done" not in arrays or "loss" not in arrays:
        # without them nothing is known to be finished: every unit is recomputed on repair
        return damage
    dims = {name: expected[name]["dims"] for name in arrays}
    block = int(arrays["done"].chunks[2])
    if attrs.get("block_size") != block:
        damage.block_size = block
    n_v, n_h, n_c = arrays["done"].shape
    per_chip = [n for n in arrays if "chip" in dims[n] and n != "chip"]
    bad_blocks: dict[tuple[int, int, int], str] = {}  # (variant | -1, hardware, block) -> why
    for name in per_chip:
        arr = arrays[name]
        for coords in np.ndindex(*arr.cdata_shape):
            key = f"{name}/{arr.metadata.encode_chunk_key(coords)}"
            at = dict(zip(dims[name], coords))
            where = (at.get("variant", -1), at["hardware"], at["chip"])
            if name == "done":
                continue  # checked with the done mask below
            if not _is_done(arrays["done"], where, block, n_v, bad_blocks):
                continue
            why = _chunk_problem(location, arr, key, coords, name in finite)
            if why is not None:
                bad_blocks.setdefault(where, f"{name}: {why}")
    for (v, h, b), why in sorted(bad_blocks.items()):
        variants = range(n_v) if v == -1 else [v]
        for vv in variants:
            if _unit_done(arrays["done"], vv, h, b, block) is not False:
                damage.units.append(DamagedUnit(vv, h, b * block, min((b + 1) * block, n_c), why))
    damage.units_checked = sum(1 for v in range(n_v) for h in range(n_h) for b in range(-(-n_c // block)) if _unit_done(arrays["done"], v, h, b, block))
    return damage


def _unit_done(done: Any, v: int, h: int, b: int, block: int) -> bool | None:
    """Whether unit (v, h, block b) is marked done; None where its ``done`` chunk is corrupt."""
    try:
        return bool(np.asarray(done[v, h, b * block : (b + 1) * block]).all())
    except Exception:
        return None


def _is_done(done: Any, where: tuple[int, int, int], block: int, n_v: int, bad: dict[tuple[int, int, int], str]) -> bool:
    v, h, b = where
    states = [_unit_done(done, vv, h, b, block) for vv in (range(n_v) if v == -1 else [v])]
    for vv, state in zip(range(n_v) if v == -1 else [v], states):
        if state is None:
            bad.setdefault((vv, h, b), "done: the chunk does not decode (checksum)")
    return any(s is not False for s in states)


def _chunk_problem(location: Location, arr: Any, key: str, coords: tuple[int, ...], finite: bool) -> str | None:
    if not _exists(location, key):
        return "the chunk is missing"
    try:
        values = np.asarray(arr.get_block_selection(coords))
    except Exception as e:
        return f"the chunk does not decode ({type(e).__name__}: checksum or truncation)"
    if finite and not np.isfinite(values).all():
        return "non-finite values"
    return None


def repair(location: Location, damage: Damage, template: xr.Dataset) -> int:
    """Mend what :func:`verify` found: recreate damaged arrays from ``template`` (the study's
    store template), reset the block-size attribute, and mark damaged units not done so
    the next run recomputes them. Returns the number of units to recompute."""
    if damage.fatal:
        raise StoreError(f"{location} cannot be repaired: {'; '.join(damage.fatal)}; recompute it with --overwrite")
    root = _root(location, "r+")
    per_chip = {n for n, v in template.variables.items() if "chip" in v.dims and n != "chip"}
    recompute_all = bool(set(damage.arrays) & per_chip)
    unknown = sorted(set(damage.arrays) - set(template.variables))
    if unknown:
        raise StoreError(f"{location}: arrays {unknown} are not part of this study's store; recompute it with --overwrite")
    attrs = dict(root.attrs)  # xarray's append would replace the store's attributes
    for name in damage.arrays:
        try:
            del root[name]
        except Exception:  # its metadata is already unreadable or gone
            pass
        _remove_prefix(location, name)
    if damage.arrays:
        # recreated from the study's template: per-chip arrays empty (their units are recomputed),
        # the others — coordinates, the float metrics — with their values
        fresh = xr.Dataset({n: template[n].variable for n in damage.arrays})
        fresh.to_zarr(location.target, mode="a", compute=False, consolidated=False, encoding=checksummed(fresh),
                      storage_options=location.storage_options, write_empty_chunks=True)  # fmt: skip
    root = _root(location, "r+")
    root.attrs.update(attrs)
    if damage.block_size is not None:
        root.attrs["block_size"] = damage.block_size
    done = root["done"]
    if recompute_all:
        done[...] = False
        return int(np.prod(done.cdata_shape))
    for u in damage.units:
        done[u.variant, u.hardware, u.start : u.stop] = False
    return len(damage.units)


def _remove_prefix(location: Location, name: str) -> None:
    if location.url:
        location._op("remove", lambda: location.fs.rm(f"{location.fs_path}/{name}", recursive=True))
    else:
        import shutil

        shutil.rmtree(Path(location.resolved) / name, ignore_errors=True)
