"""The ideal device: conductances read exactly as programmed, at every time."""

from __future__ import annotations

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream
from .base import DEVICES, DeviceModel, DeviceState


class IdealParams(Params):
    g_max: float = Field(25.0, gt=0, description="largest conductance, µS")


@DEVICES.register("ideal", IdealParams)
class IdealDevice(DeviceModel):
    """No programming noise, no drift, no read noise (variation still applies)."""

    params: IdealParams


    def program(self, g_target: torch.Tensor, rng: Stream | torch.Generator) -> DeviceState:
        return {"g": g_target}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return state["g"], None

    def drifts(self) -> bool:
        return False
