"""Resistive RAM (filamentary oxide RRAM): lognormal programming spread, small
log-time relaxation, and read noise.

The project's own reading of the usual RRAM statistics (e.g. Wan et al., Nature 2022;
Ambrogio et al., IEEE TED 2014), every constant a named parameter:

- programming: ``G_P = G_T · exp(σ_P(g)·z)``, lognormal with a relative spread that
  grows toward the high-resistance state: ``σ_P(g) = σ_on + (σ_off − σ_on)·(1 − g)``,
  ``g = G_T/G_max``
- relaxation, with a rate drawn once per device at programming:
  ``G(t) = max(G_P · (1 − ρ·log10(t/t0)), 0)`` for ``t ≥ t0``, ``ρ ~ N(μ_ρ, σ_ρ)``
- read noise, drawn per read: ``σ_read = q·G(t)``
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream, draw_normal
from .base import DEVICES, DeviceModel, DeviceState


class RRAMParams(Params):
    g_max: float = Field(100.0, gt=0, description="largest conductance, µS")
    sigma_on: float = Field(0.05, ge=0, description="relative programming spread at G_max")
    sigma_off: float = Field(0.25, ge=0, description="relative programming spread toward G = 0")
    t0: float = Field(20.0, gt=0, description="relaxation reference time after programming, s")
    relax_mean: float = Field(0.01, description="mean relative conductance loss per decade of time")
    relax_sigma: float = Field(0.01, ge=0, description="device-to-device spread of the relaxation rate")
    read_noise: float = Field(0.01, ge=0, description="relative read noise q")


@DEVICES.register("rram", RRAMParams)
class RRAMDevice(DeviceModel):
    """Filamentary RRAM: lognormal programming, log-time relaxation, read noise."""

    params: RRAMParams


    def program(self, g_target: torch.Tensor, rng: Stream | torch.Generator) -> DeviceState:
        p = self.params
        g = (g_target / p.g_max).clamp(0.0, 1.0)
        sigma = p.sigma_on + (p.sigma_off - p.sigma_on) * (1 - g)
        g_prog = g_target * torch.exp(sigma * draw_normal(rng, g_target, "prog"))
        rate = p.relax_mean + p.relax_sigma * draw_normal(rng, g_target, "relax")
        return {"g_prog": g_prog, "rate": rate}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.params
        decades = math.log10(max(t, p.t0) / p.t0)
        g = (state["g_prog"] * (1 - state["rate"] * decades)).clamp(min=0.0)
        return g, (g * p.read_noise if p.read_noise > 0 else None)

    def drifts(self) -> bool:
        return self.params.relax_mean != 0 or self.params.relax_sigma > 0
