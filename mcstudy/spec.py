"""The study schema: a YAML file -> frozen, validated objects.

Nothing runs and nothing is written until the whole file validates. Every problem is
reported at once, each with its field path, the bad value and what is allowed
(``hardware.pcm.variation.within.sigma: input should be greater than or equal to 0;
got -0.1``). Study files are untrusted input: YAML is read with the safe loader, and a
duplicate key is an error rather than silently overwriting the first.

Sweeps: a list of numbers on a numeric field of a hardware population (or of a
variant's trainer) expands into one named entry per value (the cartesian product when
several fields are swept), e.g. ``pcm[variation.within.sigma=0.05]``; the swept values
become coordinates along ``hardware`` (``variation_within_sigma``) or ``variant``.
Swept populations share their chips: chip c of every sweep point is drawn from the same
stream (keyed by the population's name in the file), so curves along a sweep are paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, Field, PositiveInt, ValidationError

from .data import DATASETS, DataSpec
from .errors import McStudyError, SpecError
from .hardware import DEVICES, MAPPINGS, PeripherySpec, Population, TileSpec, Variation
from .hardware.chip import ReadNoiseMode, WeightScale, off_state_problem
from .models import MODELS
from .procedures import PROCEDURES, study_metrics
from .programming import Strategy, StrategyMapping
from .registry import Params, Registry
from .times import MAX_TIME_SECONDS, TIME_UNITS, TimeSeconds, format_time, parse_time  # noqa: F401  (the schema's vocabulary)
from .training import TRAINERS

PHYSICS_VERSION = 2
"""Version of the models behind the numbers, part of every study's hash: raise it with any
change that changes a study's numbers, so a store written before is never resumed with
chips computed after (the store names both versions). 2: HWA's continuous surrogate,
trained weight ranges, the per-vector read-noise split, σ_prog ∝ G_max, asymmetry within
[G_min, G_max], RRAM's finite off state, ideal devices in units of G_max."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"

# What a study may ask for: a study file is untrusted input, and each bound keeps a typo
# (chips: 10**12) from exhausting memory instead of failing with a message (README, "Limits").
MAX_FILE_BYTES = 1 << 20  # 1 MiB of YAML
MAX_YAML_NODES = 100_000  # YAML nodes after expanding aliases (a "billion laughs" file is refused)
MAX_NAME_LENGTH = 100  # a study's or an entry's name (it becomes a file name)
MAX_CHIPS = 10_000_000
MAX_TIMES = 1_000
MAX_VARIANTS = 1_000  # after sweeps
MAX_POPULATIONS = 10_000  # after sweeps
MAX_PROCEDURES = 100
MAX_RESULTS = 5_000_000_000  # variants × populations × procedures × times × chips
_NAME_RE = re.compile(NAME_PATTERN)

# -- sections validated as plain models --------------------------------------------


class ExecutionSpec(Params):
    """How the study runs; not part of the study's hash (same numbers on every executor)."""

    executor: Literal["serial", "local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster: 'local' (start one), 'auto' or HOST:PORT")
    workers: PositiveInt | None = Field(None, le=100_000, description="worker processes or Ray actors (default: CPU count)")
    block_size: PositiveInt = Field(64, description="chips per work unit")
    threads_per_worker: PositiveInt = Field(1, le=256, description="torch threads in each worker")
    eval_batch: PositiveInt = Field(1024, description="test samples per forward pass")
    device: Literal["cpu", "cuda"] = "cpu"


class AnalysisSpec(Params):
    yield_within: float = Field(
        0.01, ge=0, le=1, description="a chip counts toward yield if its accuracy is within this of the float model's"
    )


class _StudyFile(Params):
    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    description: str = Field("", max_length=10_000)
    seed: int = Field(0, ge=0, lt=2**63)
    chips: PositiveInt = Field(100, le=MAX_CHIPS)
    times: tuple[TimeSeconds, ...] = Field(min_length=1, max_length=MAX_TIMES)
    data: DataSpec = DataSpec()
    model: str | dict[str, Any]
    variants: dict[str, Any] = Field(min_length=1)
    hardware: dict[str, Any] = Field(min_length=1)
    procedures: dict[str, Any] = Field(default_factory=lambda: {"inference": None}, min_length=1)
    execution: ExecutionSpec = ExecutionSpec()
    analysis: AnalysisSpec = AnalysisSpec()


# -- the validated study -----------------------------------------------------------


def _dump(params: BaseModel) -> dict[str, Any]:
    """Parameters as they enter a study's hash: every value that differs from its default
    (a new parameter with a default, added in a later mcstudy, does not change the hash of
    studies that do not set it; a changed default changes the numbers, and PHYSICS_VERSION)."""
    return params.model_dump(mode="json", exclude_defaults=True)


@dataclass(frozen=True)
class Component:
    """A registry entry named in the study file, with its validated parameters."""

    name: str
    params: Params

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, **_dump(self.params)}


@dataclass(frozen=True)
class VariantSpec:
    name: str
    trainer: Component
    sweep: tuple[tuple[str, float], ...] = ()
    model: Component | None = None  # the variant's own model (``model:`` in its entry); None: the study's

    def canonical(self) -> dict[str, Any]:
        out = self.trainer.canonical()
        return out if self.model is None else {**out, "model": self.model.canonical()}


@dataclass(frozen=True)
class PopulationSpec:
    name: str
    base: str  # the name in the study file: the chips' identity (shared by sweep points)
    device: Component
    mapping: Component
    variation: Variation
    tile: TileSpec = TileSpec()
    periphery: PeripherySpec = PeripherySpec()
    read_noise: ReadNoiseMode = "per_read"
    weight_scale: WeightScale = "auto"
    sweep: tuple[tuple[str, float], ...] = ()
    programming: "ProgrammingSpec | None" = None
    strategy: Strategy | None = None  # loaded from the study's strategy file
    chips_of: str | None = None

    @property
    def chip_key(self) -> str:
        """The name its chips are drawn under: its own (as written), or ``chips_of``'s."""
        return self.chips_of or self.base

    def build(self, strategy: Strategy | None = None) -> Population:
        """The population's physics; ``strategy`` (or the one the study names) programs
        its multi-pair weights."""
        pop = Population.build(
            self.device.name, self.device.params, self.mapping.name, self.mapping.params,
            self.variation, self.tile, self.periphery, self.read_noise, self.weight_scale,
        )  # fmt: skip
        named = {"naive": Strategy.naive, "equal": Strategy.equal}
        preset = named.get(self.programming.strategy) if self.programming else None
        chosen = strategy or self.strategy or (preset() if preset else None)
        if chosen is None:
            return pop
        return dataclasses.replace(pop, mapping=StrategyMapping(chosen, self.mapping.params))  # type: ignore[arg-type]

    def canonical(self) -> dict[str, Any]:
        out = {
            "base": self.base,
            "device": self.device.canonical(),
            "mapping": self.mapping.canonical(),
            "variation": _dump(self.variation),
            "tile": _dump(self.tile),
            "periphery": _dump(self.periphery),
        }
        for key, value, default in (("read_noise", self.read_noise, "per_read"), ("weight_scale", self.weight_scale, "auto")):
            if value != default:
                out[key] = value
        if self.programming is not None and self.programming.strategy != "default":
            out["programming"] = _dump(self.programming)
            if self.strategy is not None:  # the file's content, not its path, decides the numbers
                out["programming"]["strategy"] = self.strategy.to_dict()
        if self.chips_of is not None:
            out["chips_of"] = self.chips_of
        return out


@dataclass(frozen=True)
class ProcedureSpec:
    name: str
    kind: Component


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    seed: int
    chips: int
    times: tuple[float, ...]
    data: DataSpec
    model: Component
    variants: tuple[VariantSpec, ...]
    hardware: tuple[PopulationSpec, ...]
    procedures: tuple[ProcedureSpec, ...]
    execution: ExecutionSpec
    analysis: AnalysisSpec
    source_text: str = ""
    source_path: str = ""
    variant_coords: dict[str, tuple[float, ...]] = field(default_factory=dict)
    hardware_coords: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def canonical(self) -> dict[str, Any]:
        """Everything that determines the numbers (not the name, description or execution)."""
        return {
            "physics": PHYSICS_VERSION,
            "seed": self.seed,
            "chips": self.chips,
            "times": list(self.times),
            "data": _dump(self.data),
            "model": self.model.canonical(),
            "variants": {v.name: v.canonical() for v in self.variants},
            "hardware": {h.name: h.canonical() for h in self.hardware},
            "procedures": {p.name: p.kind.canonical() for p in self.procedures},
        }

    @property
    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def metrics(self) -> tuple[str, ...]:
        """Per-chip metrics the study records (see ``procedures.study_metrics``)."""
        return study_metrics([p.kind.name for p in self.procedures])

    def variant(self, name: str) -> VariantSpec:
        return next(v for v in self.variants if v.name == name)

    def model_of(self, variant: VariantSpec) -> Component:
        """The model a variant trains: its own ``model:`` entry, else the study's."""
        return variant.model or self.model

    def population(self, name: str) -> PopulationSpec:
        return next(h for h in self.hardware if h.name == name)

    def scale_used(self, variant: VariantSpec, population: PopulationSpec) -> str:
        """The weight scale ``variant``'s network is programmed with on ``population``:
        ``auto`` is ``trained`` when the variant's trainer records weight ranges."""
        if population.weight_scale != "auto":
            return population.weight_scale
        return "trained" if TRAINERS.get(variant.trainer.name).obj.has_ranges() else "tile"


# -- loading -----------------------------------------------------------------------


def load_study(path: str | Path, chips: int | None = None, seed: int | None = None) -> StudySpec:
    """Read and validate a study file. ``chips`` and ``seed`` override the file's."""
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise SpecError([("", "not a regular file (a device, pipe or socket); a study is a YAML file")], str(p))
    try:
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            raise SpecError([("", f"the file is {p.stat().st_size:,} bytes; a study file may have at most {MAX_FILE_BYTES:,}")], str(p))
        data = p.read_bytes()
    except OSError as e:
        raise SpecError([("", f"cannot read the file: {e.strerror or e}")], str(p)) from None
    return parse_study(decode_text(data, str(p)), source=str(p), base_dir=p.parent, chips=chips, seed=seed)


def decode_text(data: bytes, source: str) -> str:
    """A study file's text: UTF-8 (with or without a byte-order mark), or UTF-16/32 with
    one; anything else is refused with the offending byte's position."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):  # fmt: skip
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as e:
                raise SpecError([("", f"not valid {codec.upper()} text (byte {e.start}): save the file as UTF-8")], source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecError(
            [("", f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (offset {e.start}); save the file as UTF-8")], source
        ) from None
    if "\x00" in text:
        raise SpecError([("", "the file holds NUL characters: not a text file (or UTF-16 without a byte-order mark); save it as UTF-8")], source)
    return text


def parse_study(
    text: str, source: str = "<string>", base_dir: Path | None = None, chips: int | None = None, seed: int | None = None
) -> StudySpec:
    """Validate study-file text (see :func:`load_study`)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise SpecError([("", f"the study text has more than {MAX_FILE_BYTES:,} bytes")], source)
    raw = _read_yaml(text, source)
    if chips is not None:
        raw["chips"] = chips
    if seed is not None:
        raw["seed"] = seed
    problems: list[tuple[str, str]] = []
    try:
        top = _StudyFile.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_problems(e, _StudyFile), source) from None

    data = _check_data(top.data, base_dir, problems)
    model = _component(top.model, MODELS, "model", "name", problems)
    own_models, variant_entries = _variant_models(top.variants, problems)
    variants = _expand_named(variant_entries, "variants", "trainer", TRAINERS, problems)
    hardware = _expand_hardware(top.hardware, problems, base_dir)
    procedures = [
        ProcedureSpec(name, comp)
        for name, comp in _named(top.procedures, "procedures", "kind", PROCEDURES, problems).items()
    ]
    bases = {h.base for h in hardware}
    for h in hardware:
        if h.chips_of is not None and (h.chips_of not in bases or h.chips_of == h.base):
            others = ", ".join(sorted(bases - {h.base})) or "no other population"
            problems.append((f"hardware.{h.base}.chips_of", f"must name another hardware population; got {h.chips_of!r}; have {others}"))
    without = {n.split("[")[0]: c.name for n, c, _ in variants if not TRAINERS.get(c.name).obj.has_ranges()}
    for base in sorted({h.base for h in hardware if h.weight_scale == "trained"} if without else ()):
        listed = ", ".join(f"variant {v!r} uses {t!r}" for v, t in without.items())
        problems.append((f"hardware.{base}.weight_scale", f"'trained' needs weight ranges from every variant's trainer, but {listed}, without; use auto, layer or tile"))
    times = tuple(sorted(top.times))
    if len(set(times)) != len(times):
        problems.append(("times", f"duplicate times; got {[format_time(t) for t in top.times]}"))
    for section, n, limit in (("variants", len(variants), MAX_VARIANTS), ("hardware", len(hardware), MAX_POPULATIONS), ("procedures", len(procedures), MAX_PROCEDURES)):
        if n > limit:
            problems.append((section, f"{n:,} entries after expanding sweeps; a study may have at most {limit:,}"))
    results = len(variants) * len(hardware) * len(procedures) * len(times) * top.chips
    if results > MAX_RESULTS:
        problems.append(("chips", f"{len(variants)} variants × {len(hardware)} populations × {len(procedures)} procedures × {len(times)} times × {top.chips:,} chips = {results:,} results per metric; at most {MAX_RESULTS:,}"))
    if problems:
        raise SpecError(problems, source)
    assert model is not None
    return StudySpec(
        name=top.name,
        description=top.description,
        seed=top.seed,
        chips=top.chips,
        times=times,
        data=data,
        model=model,
        variants=tuple(VariantSpec(n, c, s, own_models.get(n.split("[")[0])) for n, c, s in variants),
        hardware=tuple(hardware),
        procedures=tuple(procedures),
        execution=top.execution,
        analysis=top.analysis,
        source_text=text,
        source_path=source,
        variant_coords=_sweep_coords([(n, c.params, s) for n, c, s in variants], _trainer_value),
        hardware_coords=_sweep_coords([(h.name, h, h.sweep) for h in hardware], _population_value),
    )


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([("", f"not valid YAML: {e}")], source) from None
    except RecursionError:
        raise SpecError([("", "the YAML is nested too deeply")], source) from None
    size = _expanded_size(node, {})
    if size > MAX_YAML_NODES:
        raise SpecError([("", f"the YAML expands to {size:,} nodes through its aliases (*name); at most {MAX_YAML_NODES:,}")], source)
    dups: list[tuple[str, str]] = []
    _find_duplicate_keys(node, (), dups)
    if dups:
        raise SpecError(dups, source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:  # e.g. a python/object tag: the safe loader refuses it
        raise SpecError([("", f"not valid YAML for a study file: {e}")], source) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"the file must hold a mapping of study fields; got {type(raw).__name__}")], source)
    return _tuples(raw)


def _expanded_size(node: yaml.Node | None, memo: dict[int, int]) -> int:
    """Nodes of the document once every alias is expanded, counted without expanding
    (each node once; an alias re-uses its anchor's count), saturating past the limit."""
    if node is None:
        return 0
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_YAML_NODES + 1  # a node that contains itself expands for ever
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [n for kv in node.value for n in kv]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        total = min(total + _expanded_size(child, memo), MAX_YAML_NODES + 1)
    memo[key] = total
    return total


def _find_duplicate_keys(node: yaml.Node | None, path: tuple[str, ...], out: list[tuple[str, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                out.append((".".join(path + (key,)), f"duplicate key (line {k.start_mark.line + 1}): names must be unique"))
            seen.add(key)
            _find_duplicate_keys(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _find_duplicate_keys(v, path + (str(i),), out)


def _tuples(x: Any) -> Any:
    """YAML lists -> tuples, so frozen models validate strictly."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


# -- error formatting ---------------------------------------------------------------


def _pydantic_problems(e: ValidationError, cls: type[BaseModel] | None, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        path = ".".join([prefix] + loc if prefix else loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(cls, err["loc"][:-1])
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            msg = "required, but missing"
        elif kind in _BOUNDS:
            op, key = _BOUNDS[kind]
            msg = f"must be {op} {err['ctx'][key]}; got {err['input']!r}"
        else:
            text = err["msg"]
            text = text[0].lower() + text[1:]
            if kind == "value_error":
                text = text.removeprefix("value error, ")
            msg = f"{text}; got {err['input']!r}"
        out.append((path, msg))
    return out


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _unwrap(ann: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(ann) for t in _unwrap(a)]
    return [ann]


def _model_class(ann: Any) -> type[BaseModel] | None:
    for t in _unwrap(ann):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _allowed_keys(cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    for key in loc:
        if cls is None or not isinstance(key, str) or key not in cls.model_fields:
            return []
        cls = _model_class(cls.model_fields[key].annotation)
    return list(cls.model_fields) if cls is not None else []


# -- components ---------------------------------------------------------------------


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


def _check_name(name: str, path: str, problems: list[tuple[str, str]]) -> bool:
    if not _NAME_RE.match(name):
        problems.append((path, f"names may use letters, digits and _ . + - (starting with a letter or digit); got {name!r}"))
        return False
    return True


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


def _variant_models(raw: dict[str, Any], problems: list[tuple[str, str]]) -> tuple[dict[str, Component], dict[str, Any]]:
    """Variants may name their own model (``model: {name: lstm, hidden: 32}``): those
    models, and the variant entries without them."""
    models: dict[str, Component] = {}
    entries: dict[str, Any] = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and "model" in entry:
            entry = dict(entry)
            comp = _component(entry.pop("model"), MODELS, f"variants.{name}.model", "name", problems)
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


def _programming_shorthand(v: Any) -> Any:
    return {"strategy": v} if isinstance(v, str) else v


class ProgrammingSpec(Params):
    """How weights are split over the four devices of a ``multi_pair`` population
    (Mackin et al.): the mapping's own split (``default``), the ``naive`` strategy, the
    ``equal`` split (both pairs carry the weight equally, F = 1, full range),
    ``optimize`` (searched once per variant and cached), or a saved strategy file."""

    strategy: str = Field("default", description="default | naive | equal | optimize | path to a strategy JSON file")
    knots: int = Field(5, ge=2, le=16, description="knots of the piecewise-linear functions (optimize)")
    samples: PositiveInt = Field(4096, description="weights sampled from the network for the objective (optimize)")
    maxiter: PositiveInt = Field(60, description="differential-evolution generations at most (optimize)")
    popsize: PositiveInt = Field(12, description="population size per parameter (optimize)")
    tol: float = Field(1e-3, gt=0, description="relative convergence tolerance (optimize)")
    workers: PositiveInt = Field(1, le=64, description="processes evaluating candidates in parallel (optimize)")
    seed: int = Field(0, description="seed of the weight sample, the objective's noise and the search")

    @property
    def file(self) -> bool:
        return self.strategy not in ("default", "naive", "equal", "optimize")


class _PopulationSections(Params):
    """The plain (non-registry) sections of a hardware population."""

    variation: Variation = Variation()
    tile: TileSpec = TileSpec()
    periphery: PeripherySpec = PeripherySpec()
    read_noise: ReadNoiseMode = "per_read"
    weight_scale: WeightScale = Field(
        "auto", description="the weight mapped to G_max: the trainer's range (trained), the layer's or each tile's largest |w|; auto: trained where the trainer has ranges, else tile"
    )
    programming: Annotated[ProgrammingSpec, BeforeValidator(_programming_shorthand)] = ProgrammingSpec()
    chips_of: str | None = Field(None, description="program the chips of this other population (paired comparisons)")


_POPULATION_KEYS = ("device", "mapping", *_PopulationSections.model_fields)


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
            if device is not None and hasattr(device.params, "resolve"):
                try:
                    device = Component(device.name, device.params.resolve(base_dir))
                except ValueError as e:
                    problems.append((f"{where}.device.csv", str(e)))
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
                path = Path(plain.programming.strategy).expanduser()
                if not path.is_absolute() and base_dir is not None:
                    path = (base_dir / path).resolve()
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


def _check_data(data: DataSpec, base_dir: Path | None, problems: list[tuple[str, str]]) -> DataSpec:
    if data.dataset not in DATASETS:
        problems.append(("data.dataset", DATASETS.unknown_message(data.dataset)))
        return data
    entry = DATASETS.get(data.dataset).obj
    if entry.needs_root:
        if data.root is None:
            problems.append(("data.root", f"dataset {data.dataset!r} reads local files: set data.root to their directory"))
            return data
        root = Path(data.root).expanduser()
        if not root.is_absolute() and base_dir is not None:
            root = (base_dir / root).resolve()
        if not root.is_dir():
            problems.append(("data.root", f"not a directory; got {str(root)!r}"))
        return data.model_copy(update={"root": str(root)})
    return data
