"""SRAM compute-in-memory / analog MAC: exact stored weights, analog multiplier mismatch.

Weights are held digitally (no programming noise, no drift, no read noise); the analog
multiply-accumulate has a per-multiplier gain error fixed at fabrication. By Pelgrom's
law the mismatch scales as 1/√area: ``σ = mismatch / √area`` (``area`` relative to the
reference cell).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream, draw_normal
from .base import DEVICES, DeviceModel, DeviceState


class SRAMParams(Params):
    g_max: float = Field(1.0, gt=0, description="full-scale cell value (arbitrary units)")
    mismatch: float = Field(0.02, ge=0, description="relative gain error σ of a reference-size cell")
    area: float = Field(1.0, gt=0, description="cell area relative to the reference (σ ∝ 1/√area)")


@DEVICES.register("sram", SRAMParams)
class SRAMDevice(DeviceModel):
    """SRAM / analog MAC: no drift, multiplier mismatch only."""

    params: SRAMParams


    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        sigma = self.params.mismatch / math.sqrt(self.params.area)
        return {"g": g_target * (1 + sigma * draw_normal(rng, g_target, "mismatch"))}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return state["g"], None

    def rewrite(self, state: DeviceState, g_target: torch.Tensor, fabrication: Stream, write: Stream) -> DeviceState:
        """New values in the same cells: exact, through each cell's fabrication mismatch."""
        return self.program(g_target, fabrication)

