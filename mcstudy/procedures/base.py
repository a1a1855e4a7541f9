"""What runs on a deployed chip at each drift time.

A procedure is prepared once per block of programmed chips (``prepare``: e.g. a
reference readout right after programming) and then evaluated at every drift time on
the same chips (``evaluate``), returning per-chip metrics. Every procedure of a study
sees the same chips and, at a given time, the same read of them, so differences between
procedures are paired chip by chip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..analog import AnalogNetwork
from ..hardware import ChipBatch, ChipRead
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


class Procedure(ABC):
    extra_metrics: tuple[str, ...] = ()  # per-chip metrics beyond METRICS (names in METRIC_ATTRS)

    def __init__(self, params: Params) -> None:
        self.params = params

    def problems(self, net: AnalogNetwork, data: EvalData) -> list[str]:
        """What makes this procedure unusable with this network and data (checked before
        anything is written)."""
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
