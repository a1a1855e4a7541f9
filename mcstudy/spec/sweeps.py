"""Named entries and sweeps: a list of numbers on a numeric field expands into one named entry per value; hardware sections."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import McStudyError
from ..hardware import DEVICES, MAPPINGS
from ..hardware.chip import off_state_problem
from ..models import MODELS
from ..hardware.strategy import Strategy
from ..location import study_relative
from ..registry import FileParamError, Params, Registry
from .limits import MAX_POPULATIONS
from .problems import _check_name, _model_class, _pydantic_problems, _unwrap
from .schema import Component, PopulationSpec, _POPULATION_KEYS, _PopulationSections


def _component(
    raw: Any, registry: Registry[Any], path: str, key: str, problems: list[tuple[str, str]], default: str | None = None
) -> Component | None:
    """``name`` or ``{key: name, **params}`` -> a validated Component."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {key: raw}
    if not isinstance(raw, dict):
        problems.append((path, f"expected a {registry.kind} name or a mapping with '{key}'; got {raw!r}"))
        return None
    raw = dict(raw)
    name = raw.pop(key, default)
    if name is None:
        problems.append((f"{path}.{key}", f"required, but missing; allowed: {', '.join(registry.names())}"))
        return None
    if not isinstance(name, str):
        problems.append((f"{path}.{key}", f"expected a {registry.kind} name; got {name!r}; allowed: {', '.join(registry.names())}"))
        return None
    if name not in registry:
        problems.append((f"{path}.{key}", registry.unknown_message(name)))
        return None
    params_cls = registry.get(name).params
    try:
        params = params_cls.model_validate(raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(e, params_cls, path))
        return None
    return Component(name, params)


def _named(
    raw: dict[str, Any], section: str, key: str, registry: Registry[Any], problems: list[tuple[str, str]]
) -> dict[str, Component]:
    """A mapping of named entries; an entry's implementation defaults to its own name."""
    out: dict[str, Component] = {}
    for name, entry in raw.items():
        if not _check_name(name, f"{section}.{name}", problems):
            continue
        default = name if name in registry else None
        comp = _component(entry, registry, f"{section}.{name}", key, problems, default=default)
        if comp is not None:
            out[name] = comp
    return out


# -- sweeps -------------------------------------------------------------------------


def _is_numeric_field(ann: Any) -> bool:
    kinds = [t for t in _unwrap(ann) if t is not type(None)]
    return bool(kinds) and all(t in (int, float) for t in kinds)


def _sweep_leaves(raw: Any, cls: type[BaseModel] | None, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], tuple[Any, ...]]]:
    """Paths of numeric fields given a list of values."""
    out: list[tuple[tuple[str, ...], tuple[Any, ...]]] = []
    if not isinstance(raw, dict) or cls is None:
        return out
    for k, v in raw.items():
        f = cls.model_fields.get(k)
        if f is None:
            continue
        if isinstance(v, tuple) and _is_numeric_field(f.annotation):
            out.append((path + (k,), v))
        elif isinstance(v, dict):
            out.extend(_sweep_leaves(v, _model_class(f.annotation), path + (k,)))
    return out


def _set_path(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(raw)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set_path(out[path[0]], path[1:], value)
    return out


def _expand(
    name: str, raw: dict[str, Any], leaves: list[tuple[tuple[str, ...], tuple[Any, ...]]], where: str, problems: list[tuple[str, str]]
) -> list[tuple[str, dict[str, Any], tuple[tuple[str, float], ...]]]:
    """One entry per combination of swept values."""
    for path, values in leaves:
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        where_path = f"{where}.{'.'.join(path)}"
        if not values:
            problems.append((where_path, "an empty list; a sweep needs at least one value"))
            return []
        if bad:
            problems.append((where_path, f"a sweep takes numbers only; got {list(values)!r}"))
            return []
        if len(set(values)) != len(values):
            problems.append((where_path, f"duplicate values in the sweep {list(values)!r}"))
            return []
    if not leaves:
        return [(name, raw, ())]
    combos = math.prod(len(values) for _, values in leaves)
    if combos > MAX_POPULATIONS:  # refused before anything is expanded
        problems.append((where, f"the sweep expands to {combos:,} entries; a study may have at most {MAX_POPULATIONS:,}"))
        return []
    out = []
    seen: set[str] = set()
    for combo in itertools.product(*(values for _, values in leaves)):
        entry = raw
        sweep = []
        for (path, _), v in zip(leaves, combo):
            entry = _set_path(entry, path, v)
            sweep.append((".".join(path), float(v)))
        full = f"{name}[{','.join(f'{p}={v:g}' for p, v in sweep)}]"
        if full in seen:
            problems.append((where, f"two sweep points get the name {full} (names show 6 significant digits); use values that differ in them"))
            return []
        seen.add(full)
        out.append((full, entry, tuple(sweep)))
    return out


def _resolved(component: Component, where: str, base_dir: Path | None, problems: list[tuple[str, str]]) -> Component:
    """``component`` with the files its parameters name resolved (``Params.resolve``)."""
    try:
        return Component(component.name, component.params.resolve(base_dir))
    except FileParamError as e:
        problems.append((f"{where}.{e.field}", str(e)))
        return component


def _named_factory(raw: Any) -> Any:
    """``model: {factory: ...}`` needs no ``name: factory``."""
    if isinstance(raw, dict) and "factory" in raw and "name" not in raw:
        return {"name": "factory", **raw}
    return raw


def _variant_models(raw: dict[str, Any], problems: list[tuple[str, str]]) -> tuple[dict[str, Component], dict[str, Any]]:
    """Variants may name their own model (``model: {name: lstm, hidden: 32}``): those
    models, and the variant entries without them."""
    models: dict[str, Component] = {}
    entries: dict[str, Any] = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and "model" in entry:
            entry = dict(entry)
            comp = _component(_named_factory(entry.pop("model")), MODELS, f"variants.{name}.model", "name", problems)
            if comp is not None:
                models[name] = comp
        entries[name] = entry
    return models, entries


def _expand_named(
    raw: dict[str, Any], section: str, key: str, registry: Registry[Any], problems: list[tuple[str, str]]
) -> list[tuple[str, Component, tuple[tuple[str, float], ...]]]:
    out = []
    for name, entry in raw.items():
        if not _check_name(name, f"{section}.{name}", problems):
            continue
        if isinstance(entry, str) or entry is None:
            entry = {key: entry or name}
        if not isinstance(entry, dict):
            problems.append((f"{section}.{name}", f"expected a mapping; got {entry!r}"))
            continue
        impl = entry.get(key, name if name in registry else None)
        cls = registry.get(impl).params if impl in registry else None
        for ename, eraw, sweep in _expand(name, entry, _sweep_leaves(entry, cls, ()), f"{section}.{name}", problems):
            comp = _component(eraw, registry, f"{section}.{name}", key, problems, default=name if name in registry else None)
            if comp is not None:
                out.append((ename, comp, sweep))
    return out


def _expand_hardware(raw: dict[str, Any], problems: list[tuple[str, str]], base_dir: Path | None = None) -> list[PopulationSpec]:
    out: list[PopulationSpec] = []
    for name, entry in raw.items():
        where = f"hardware.{name}"
        if not _check_name(name, where, problems):
            continue
        if not isinstance(entry, dict):
            problems.append((where, f"expected a mapping with {', '.join(_POPULATION_KEYS)}; got {entry!r}"))
            continue
        unknown = [k for k in entry if k not in _POPULATION_KEYS]
        for k in unknown:
            problems.append((f"{where}.{k}", f"unknown key; allowed keys: {', '.join(_POPULATION_KEYS)}"))
        if unknown:
            continue
        leaves = []
        for key, registry, name_key, default in (("device", DEVICES, "name", None), ("mapping", MAPPINGS, "kind", "differential")):
            v = entry.get(key)
            if isinstance(v, dict) and v.get(name_key, default) in registry:
                leaves += _sweep_leaves(v, registry.get(v.get(name_key, default)).params, (key,))
        sections = {k: v for k, v in entry.items() if k in _PopulationSections.model_fields}
        leaves += _sweep_leaves(sections, _PopulationSections, ())
        for pname, praw, sweep in _expand(name, entry, leaves, where, problems):
            n_before = len(problems)
            device = _component(praw.get("device"), DEVICES, f"{where}.device", "name", problems)
            if device is not None:
                device = _resolved(device, f"{where}.device", base_dir, problems)
            mapping = _component(praw.get("mapping"), MAPPINGS, f"{where}.mapping", "kind", problems, default="differential")
            if device is not None and mapping is not None:
                device_ratio = DEVICES.get(device.name).obj(device.params).on_off_ratio
                mapping_ratio = getattr(mapping.params, "on_off_ratio", None)
                if device_ratio is not None and mapping_ratio is not None and mapping_ratio > device_ratio:
                    problems.append((f"{where}.mapping.on_off_ratio", off_state_problem(mapping_ratio, device_ratio)))
            try:
                plain = _PopulationSections.model_validate({k: v for k, v in praw.items() if k in _PopulationSections.model_fields})
            except ValidationError as e:
                problems.extend(_pydantic_problems(e, _PopulationSections, where))
                continue
            strategy = None
            if plain.programming.strategy != "default" and mapping is not None and mapping.name != "multi_pair":
                problems.append((f"{where}.programming", f"a programming strategy needs mapping kind 'multi_pair' (four devices); got {mapping.name!r}"))
            elif plain.programming.file:
                path = study_relative(plain.programming.strategy, base_dir)
                try:
                    strategy = Strategy.load(path)
                except McStudyError as e:
                    problems.append((f"{where}.programming.strategy", str(e)))
            if len(problems) == n_before and device is not None and mapping is not None:
                out.append(
                    PopulationSpec(
                        pname, name, device, mapping, plain.variation, plain.tile, plain.periphery, plain.read_noise,
                        plain.weight_scale, sweep, plain.programming, strategy, plain.chips_of,
                    )
                )
    return out


def _trainer_value(params: Params, path: str) -> float:
    return _attr_path(params, path.split("."))


def _population_value(pop: PopulationSpec, path: str) -> float:
    first, *rest = path.split(".")
    root: Any = {
        "device": pop.device.params, "mapping": pop.mapping.params, "variation": pop.variation,
        "tile": pop.tile, "periphery": pop.periphery,
    }[first]  # fmt: skip
    return _attr_path(root, rest)


def _attr_path(obj: Any, parts: list[str]) -> float:
    for p in parts:
        if not hasattr(obj, p):
            return math.nan
        obj = getattr(obj, p)
    return float(obj) if isinstance(obj, (int, float)) and obj is not None else math.nan


def _sweep_coords(entries: list[tuple[str, Any, tuple[tuple[str, float], ...]]], value: Any) -> dict[str, tuple[float, ...]]:
    """For every swept field, its value in every entry (NaN where it does not apply)."""
    paths = sorted({p for _, _, sweep in entries for p, _ in sweep})
    return {p.replace(".", "_"): tuple(value(obj, p) for _, obj, _ in entries) for p in paths}


# -- data ---------------------------------------------------------------------------
