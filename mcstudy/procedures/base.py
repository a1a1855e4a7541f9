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
from ..registry import Params, Registry

METRICS: tuple[str, ...] = ("accuracy", "loss")


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
    def __init__(self, params: Params) -> None:
        self.params = params

    def prepare(self, chips: ChipBatch, net: AnalogNetwork, data: EvalData) -> Any:
        """Work done once per block right after programming; the result is passed to ``evaluate``."""
        return None

    @abstractmethod
    def evaluate(
        self, state: Any, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData
    ) -> dict[str, torch.Tensor]:
        """Per-chip metrics ``{name: (C,)}`` at time ``t``, given this time's ``read`` of the chips."""


PROCEDURES: Registry[type[Procedure]] = Registry("procedure")
