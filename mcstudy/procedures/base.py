"""What runs on a deployed chip at each drift time.

A procedure is prepared once per block of programmed chips (``prepare``: e.g. a
reference readout right after programming) and then evaluated at every drift time on
the same chips (``evaluate``), returning per-chip metrics. Every procedure of a study
sees the same chips and, at a given time, the same read of them, so differences between
procedures are paired chip by chip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..analog import AnalogNetwork
from ..analog.network import Scales
from ..hardware import ChipBatch, ChipRead, Population
from ..objectives import Objective
from ..registry import Params
from ..registries import PROCEDURES  # noqa: F401  (re-exported where it always was)
from ..vocabulary import METRIC_ATTRS, METRICS  # noqa: F401  (re-exported: the procedures' metrics)


@dataclass(frozen=True)
class EvalData:
    """Tensors a procedure may use. ``x_test``/``y_test`` only score chips; anything a
    procedure learns or calibrates comes from ``x_cal``/``y_cal``."""

    x_test: torch.Tensor
    y_test: torch.Tensor
    x_cal: torch.Tensor
    y_cal: torch.Tensor
    batch: int = 1024
    objective: Objective = field(default_factory=Objective)  # the study's loss and headline metric

    def score(self, net: AnalogNetwork, read: ChipRead, out_scales: Scales = None, out_shifts: Scales = None) -> dict[str, torch.Tensor]:
        """Per-chip metrics of ``net`` on the test split, through ``read`` and the digital trims."""
        return net.score(self.x_test, self.y_test, read, out_scales, self.batch, out_shifts, self.objective)


class Procedure(ABC):
    extra_metrics: tuple[str, ...] = ()  # per-chip metrics beyond the objective's (names in METRIC_ATTRS)
    needs_classes = False  # learns from or reports class accuracy: a classification study only

    def __init__(self, params: Params) -> None:
        self.params = params

    def problems(self, net: AnalogNetwork, data: EvalData) -> list[str]:
        """What makes this procedure unusable with this network and data (checked before
        anything is written)."""
        return []

    def population_problems(self, net: AnalogNetwork, population: Population) -> list[str]:
        """What makes this procedure unusable with this network on this population (checked
        before anything is written)."""
        return []

    def read_times(self, times: Sequence[float]) -> list[float]:
        """Times (s after programming) at which this procedure reads the chips beyond the
        study's own ``times`` (a reference readout, a tuning read): part of the chips' read
        schedule (``ChipBatch.scheduled``), so every read of a chip is one joint draw."""
        return []

    def prepare(self, chips: ChipBatch, net: AnalogNetwork, data: EvalData) -> Any:
        """Work done once per block right after programming; the result is passed to ``evaluate``."""
        return None

    @abstractmethod
    def evaluate(
        self, state: Any, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData
    ) -> dict[str, torch.Tensor]:
        """Per-chip metrics ``{name: (C,)}`` at time ``t``, given this time's ``read`` of the chips."""




def with_before_and_costs(
    out: dict[str, torch.Tensor], before: torch.Tensor | None, figures: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Add an on-chip procedure's ``accuracy_before`` (NaN when not recorded) and its cost
    figures (the same for every chip) to its per-chip metrics ``out``."""
    c = out["accuracy"].shape[0]
    out["accuracy_before"] = before if before is not None else torch.full((c,), float("nan"), dtype=torch.float64)
    for k, v in figures.items():
        out[k] = torch.full((c,), v, dtype=torch.float64)
    return out


def read_once_problems(net: AnalogNetwork, data: EvalData, kind: str) -> list[str]:
    """A procedure that trims or learns each crossbar's output once per forward pass
    cannot serve a crossbar read several times in one pass (an LSTM's recurrent weights,
    once per time step; attention's projections, once per input): it is refused."""
    x = data.x_cal if data.x_cal.shape[0] else data.x_test
    net.forward(x[:1], net.nominal_read())
    many = [f"{n.removesuffix('.weight')} ({k}×)" for n, k in zip(net.weight_names, net.reads_last_pass) if k > 1]
    if not many:
        return []
    return [f"{kind} sets each crossbar's output trims once per forward pass, but these crossbars are read several times in one pass: {', '.join(many)}"]


@torch.no_grad()
def layer_outputs(net: AnalogNetwork, x: torch.Tensor, read: ChipRead, purpose: str) -> list[torch.Tensor]:
    """Every analog layer's output ``(C, N, out, *spatial)`` for inputs ``x``, after the
    neurons and before any digital trim or bias (what an on-chip monitor can see)."""
    seen: list[torch.Tensor] = []

    def keep(_: int, y: torch.Tensor) -> tuple[None, None]:
        seen.append(y)
        return None, None

    net.logits(x, read, purpose=purpose, calibrate=keep)
    return seen
