"""The validated study: frozen objects for variants, populations, procedures and the study, their canonical form and hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, PositiveInt

from ..data import DataSpec
from ..hardware import PeripherySpec, TileSpec, Variation
from ..hardware.chip import ReadNoiseMode, WeightScale
from ..hardware.strategy import Strategy
from ..registries import PROCEDURES, TRAINERS
from ..objectives import Objective
from ..registry import NoParams, Params
from ..times import TimeSeconds
from ..vocabulary import PHYSICS_VERSION
from .limits import MAX_CHIPS, MAX_NAME_LENGTH, MAX_TIMES, NAME_PATTERN


# -- sections validated as plain models --------------------------------------------


class ExecutionSpec(Params):
    """How the study runs; not part of the study's hash (same numbers on every executor)."""

    executor: Literal["serial", "local", "ray"] = Field("local", description="in this process, a local process pool, or a Ray cluster")
    address: str | None = Field(None, description="Ray cluster: 'local' (start one), 'auto' or HOST:PORT")
    workers: PositiveInt | None = Field(None, le=100_000, description="worker processes or Ray actors (default: CPU count)")
    block_size: PositiveInt = Field(64, description="chips per work unit")
    threads_per_worker: PositiveInt = Field(1, le=256, description="torch threads in each worker for programming and reading chips (a chip pass through the network runs on one thread, for bit identity)")
    eval_batch: PositiveInt = Field(1024, description="test samples per forward pass")
    device: Literal["cpu", "cuda"] = Field("cpu", description="torch device of the workers")


class AnalysisSpec(Params):
    yield_within: float = Field(
        0.01, ge=0, le=1, description="a chip counts toward yield if its accuracy is within this of the float model's"
    )


class _StudyFile(Params):
    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH, description="the study's name (its default store is results/NAME.zarr)")
    description: str = Field("", max_length=10_000, description="free text, kept in the store")
    seed: int = Field(0, ge=0, lt=2**63, description="draws the data split, the training and every chip")
    chips: PositiveInt = Field(100, le=MAX_CHIPS, description="chips of every hardware population")
    times: tuple[TimeSeconds, ...] = Field(min_length=1, max_length=MAX_TIMES, description="read times after programming, e.g. [20s, 1d, 1y]")
    data: DataSpec = Field(DataSpec(), description="the dataset and its splits")
    model: str | dict[str, Any] = Field(description="the network: a zoo name, or {name: ..., **params}")
    variants: dict[str, Any] = Field(min_length=1, description="training variants by name: {trainer: ..., **params}")
    hardware: dict[str, Any] = Field(min_length=1, description="hardware populations by name: device, mapping, variation, tile, periphery, ...")
    procedures: dict[str, Any] = Field(default_factory=lambda: {"inference": None}, min_length=1, description="on-chip procedures by name: {kind: ..., **params}")
    execution: ExecutionSpec = Field(ExecutionSpec(), description="how the study runs (not part of its hash)")
    analysis: AnalysisSpec = Field(AnalysisSpec(), description="the summary's yield threshold")
    loss: str | dict[str, Any] = Field("cross_entropy", description="what every variant trains for and each chip records as 'loss': cross_entropy (class labels) or mse (regression targets)")
    metric: str | dict[str, Any] = Field("accuracy", description="the headline metric of the summary and the yield: accuracy, {kind: top_k, k: 5}, mse or mae")


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
    loss: Component = field(default_factory=lambda: Component("cross_entropy", NoParams()))
    metric: Component = field(default_factory=lambda: Component("accuracy", NoParams()))
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
            # the default objective is left out: studies written before it could be named keep their hash
            **({} if self.objective.default else {"objective": {"loss": self.loss.canonical(), "metric": self.metric.canonical()}}),
        }

    @property
    def objective(self) -> Objective:
        """The study's loss and headline metric."""
        return Objective(self.loss.name, self.loss.params, self.metric.name, self.metric.params)

    @property
    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def metrics(self) -> tuple[str, ...]:
        """Per-chip metrics the study records: the objective's, then every procedure's extra
        metrics in order of first appearance (NaN where one does not apply)."""
        names = list(self.objective.metrics)
        for p in self.procedures:
            names += [m for m in PROCEDURES.get(p.kind.name).obj.extra_metrics if m not in names]
        return tuple(names)

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

    variation: Variation = Field(Variation(), description="within-chip and between-chip variation of the conductances")
    tile: TileSpec = Field(TileSpec(), description="crossbar tile size (rows × columns)")
    periphery: PeripherySpec = Field(PeripherySpec(), description="converters, output noise, operating-point drift, mismatch")
    read_noise: ReadNoiseMode = Field("per_read", description="read noise drawn once per read, or split into a shared and a per-input-vector part")
    weight_scale: WeightScale = Field(
        "auto", description="the weight mapped to G_max: the trainer's range (trained), the layer's or each tile's largest |w|; auto: trained where the trainer has ranges, else tile"
    )
    programming: Annotated[ProgrammingSpec, BeforeValidator(_programming_shorthand)] = Field(
        ProgrammingSpec(), description="how multi_pair weights are split over four devices: default, naive, equal, optimize or a strategy file"
    )
    chips_of: str | None = Field(None, description="program the chips of this other population (paired comparisons)")


_POPULATION_KEYS = ("device", "mapping", *_PopulationSections.model_fields)
