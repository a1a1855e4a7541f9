"""What a worker holds once (trained models, data, physics) and how it runs a unit.

Workers never write the store: they return a small :class:`UnitResult` to the
coordinator. Everything random comes from the chips' own streams, and every worker
runs torch with the same thread count, so a unit's numbers do not depend on which
worker, executor or block produced them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..analog import AnalogNetwork
from ..data import Dataset
from ..errors import McStudyError
from ..procedures import PROCEDURES, EvalData
from ..programming import Strategy
from ..programming.study import build_population
from ..registry import Params
from ..rng import chip_stream
from ..spec import StudySpec
from ..training import TRAINERS
from .allocator import keep_freed_memory
from .plan import WorkUnit


@dataclass(frozen=True)
class Payload:
    """Sent to every worker once: the study, the trained weights and the data it needs."""

    spec: StudySpec
    states: dict[str, dict[str, torch.Tensor]]  # variant name -> state dict
    model_params: dict[str, Params]  # variant name -> architecture (the study's, or a trainer's choice)
    input_shape: tuple[int, ...]
    n_classes: int
    x_test: np.ndarray
    y_test: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    strategies: dict[str, dict[str, Strategy]] = field(default_factory=dict)  # hardware -> variant -> optimised strategy
    ranges: dict[str, dict[str, float] | None] = field(default_factory=dict)  # variant -> trained weight ranges (or None)

    @classmethod
    def build(
        cls,
        spec: StudySpec,
        states: dict[str, dict[str, torch.Tensor]],
        data: Dataset,
        model_params: dict[str, Params] | None = None,
        strategies: dict[str, dict[str, Strategy]] | None = None,
        ranges: dict[str, dict[str, float] | None] | None = None,
    ) -> "Payload":
        arch = {v.name: (model_params or {}).get(v.name) or spec.model_of(v).params for v in spec.variants}
        return cls(
            spec, states, arch, data.input_shape, data.n_classes, data.x_test, data.y_test, data.x_cal, data.y_cal,
            strategies or {}, ranges or {},
        )  # fmt: skip


@dataclass(frozen=True)
class UnitResult:
    unit: WorkUnit
    metrics: dict[str, np.ndarray]  # name -> (procedure, time, chip)
    draws: dict[str, np.ndarray]  # name -> (chip,)
    seconds: float


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class WorkerContext:
    """Trained networks, populations, procedures and data, built once per worker."""

    def __init__(self, payload: Payload, device: str | None = None) -> None:
        keep_freed_memory()  # blocks reuse their large buffers instead of page-faulting them in again
        spec = payload.spec
        self.spec = spec
        self.device = torch.device(device or spec.execution.device)
        self.threads = spec.execution.threads_per_worker
        self.networks: dict[str, AnalogNetwork] = {}
        self.ranges: dict[str, list[float] | None] = {}  # each variant's trained weight ranges, in layer order
        for v in spec.variants:
            net = AnalogNetwork.from_state(spec.model_of(v).name, payload.model_params[v.name], payload.states[v.name], payload.input_shape, payload.n_classes)
            TRAINERS.get(v.trainer.name).obj(v.trainer.params).set_reference(net)  # judged against what its trainer computes
            self.networks[v.name] = net.to(self.device)
            self.ranges[v.name] = self.networks[v.name].layer_ranges(payload.ranges.get(v.name))
        self.populations = {h.name: build_population(h) for h in spec.hardware}
        # populations whose strategy was optimised for each variant's network
        self.variant_populations = {
            (v, h): build_population(spec.population(h), strategy) for h, per in payload.strategies.items() for v, strategy in per.items()
        }
        self.procedures = [PROCEDURES.get(p.kind.name).obj(p.kind.params) for p in spec.procedures]
        # every time a chip is read, by the study or a procedure's readout: one joint draw of correlated read noise
        self.read_times = sorted({*spec.times, *(t for proc in self.procedures for t in proc.read_times(spec.times))})

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device)

        self.data = EvalData(t(payload.x_test), t(payload.y_test), t(payload.x_cal), t(payload.y_cal), spec.execution.eval_batch, spec.objective)

    def problems(self) -> list[tuple[str, str]]:
        """``(field path, message)`` for every procedure that cannot run on a variant's network."""
        out = []
        for p, proc in zip(self.spec.procedures, self.procedures):
            for v, net in self.networks.items():
                out += [(f"procedures.{p.name}", f"{msg} (variant {v!r})") for msg in proc.problems(net, self.data)]
                for h in self.spec.hardware:
                    population = self.variant_populations.get((v, h.name)) or self.populations[h.name]
                    out += [(f"procedures.{p.name}", f"{msg} (variant {v!r}, population {h.name!r})") for msg in proc.population_problems(net, population)]
        return out

    def run(self, unit: WorkUnit) -> UnitResult:
        with torch_threads(self.threads):
            return self._run(unit)

    def _run(self, unit: WorkUnit) -> UnitResult:
        t0 = time.perf_counter()
        spec = self.spec
        variant, pop_spec = spec.variants[unit.variant], spec.hardware[unit.hardware]
        net = self.networks[variant.name]
        population = self.variant_populations.get((variant.name, pop_spec.name)) or self.populations[pop_spec.name]
        stream = chip_stream(spec.seed, pop_spec.chip_key, range(unit.start, unit.stop), self.device)
        chips = population.program(net.nominal, stream, net.granules, self.ranges[variant.name]).scheduled(self.read_times)
        states = [proc.prepare(chips, net, self.data) for proc in self.procedures]
        shape = (len(self.procedures), len(spec.times), unit.n_chips)
        metrics = {m: np.full(shape, np.nan, dtype=np.float64) for m in spec.metrics}
        for ti, t in enumerate(spec.times):
            read = chips.read(t)
            for pi, (proc, state) in enumerate(zip(self.procedures, states)):
                result = proc.evaluate(state, chips, read, t, net, self.data)
                for m in (*spec.objective.metrics, *proc.extra_metrics):
                    metrics[m][pi, ti] = result[m].cpu().numpy()
        bad = ~np.isfinite(metrics["loss"]) | ~np.isfinite(metrics[spec.objective.headline])
        if bad.any():
            _, _, chip = np.nonzero(bad)
            raise McStudyError(
                f"chip {unit.start + int(chip.min())} of population {pop_spec.name!r} gave a non-finite loss with variant "
                f"{variant.name!r}: its weights or outputs overflowed. A parameter of the population is too large to "
                "simulate (a variation sigma or a scale far beyond physical values?); nothing of this unit was written"
            )
        draws = {k: v.cpu().numpy() for k, v in chips.draws().items()}
        return UnitResult(unit, metrics, draws, time.perf_counter() - t0)

    def float_metrics(self) -> dict[str, dict[str, float]]:
        """Each variant's digital (float) accuracy and loss on the test split, through the
        same code path as the chips, with the nominal weights."""
        out = {}
        with torch_threads(self.threads):
            for name, net in self.networks.items():
                r = self.data.score(net, net.nominal_read())
                out[name] = {m: float(r[m][0]) for m in self.spec.objective.metrics}
        return out
