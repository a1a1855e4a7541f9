"""The ideal device: conductances read exactly as programmed, at every time.

An ideal device has no physics and so no physical unit: its conductances are in units
of G_max (``g_max = 1``). In these units the weight -> conductance -> weight round trip
runs exactly the arithmetic of ``Mapping.transfer``, so a chip of ideal devices
reproduces a trainer's forward pass bit for bit (README, What a variant is judged against). With
another ``g_max`` the round trip can differ from it in the last bit (µS values are
scaled in and out)."""

from __future__ import annotations

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream
from .base import DEVICES, DeviceModel, DeviceState


class IdealParams(Params):
    g_max: float = Field(1.0, gt=0, description="largest conductance (default 1: conductances in units of G_max)")


@DEVICES.register("ideal", IdealParams)
class IdealDevice(DeviceModel):
    """No programming noise, no drift, no read noise (variation still applies)."""

    params: IdealParams
    digital_weights = True


    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        return {"g": g_target}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return state["g"], None

