"""Resistive RAM (filamentary oxide RRAM): a finite off state, lognormal programming
spread, small log-time relaxation, and read noise.

The project's own reading of the usual RRAM statistics (e.g. Wan et al., Nature 2022;
Ambrogio et al., IEEE TED 2014; Milo et al., IRPS 2021), every constant a named parameter:

- a finite off state: the lowest conductance a device is programmed to is
  ``G_off = G_max / on_off_ratio`` (default 10: analog filamentary HfOx/TaOx RRAM is
  operated over about one decade of conductance; Milo et al. program 50–225 µS, a ratio
  of 4.5). It becomes the mapping's ``G_min`` unless the mapping sets its own
  ``on_off_ratio``, so a "zero" weight sits on two off-state devices, not on 0 S.
- programming: ``G_P = G_T · exp(σ_P(g)·z)``, lognormal, with a relative spread that grows
  from the on state to the off state: ``σ_P(g) = σ_on + (σ_off − σ_on)·(1 − g)/(1 − g_off)``,
  ``g = G_T/G_max`` clamped to [g_off, 1], ``g_off = 1/on_off_ratio``; the off state has
  the spread ``σ_off``. The lognormal's median is the target; its mean is
  ``G_T·exp(σ_P²/2)``, above the target (program-and-verify converges on the
  log-conductance). ``mean_corrected: true`` draws ``G_T·exp(σ_P·z − σ_P²/2)`` instead,
  whose mean is the target.
- relaxation, with a rate drawn once per device at programming:
  ``G(t) = max(G_P · (1 − ρ·log10(t/t0)), 0)`` for ``t ≥ t0``, ``ρ ~ N(μ_ρ, σ_ρ)``
- read noise, drawn per read: ``σ_read = q·G(t)``, white (every matrix-vector product sees
  fresh noise under ``read_noise: per_vector``)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream, draw_normal
from .base import DEVICES, DeviceModel, DeviceState
from ..vocabulary import REFERENCE_TIME_S


class RRAMParams(Params):
    g_max: float = Field(100.0, gt=0, description="largest conductance, µS")
    on_off_ratio: float | None = Field(
        10.0, gt=1, description="G_max / G_off, the off state's conductance (None: an ideal off state at 0 S)"
    )
    sigma_on: float = Field(0.05, ge=0, description="relative (lognormal) programming spread at G_max")
    sigma_off: float = Field(0.25, ge=0, description="relative (lognormal) programming spread of the off state G_off")
    mean_corrected: bool = Field(False, description="subtract σ_P²/2 from the log-conductance, so the mean (not the median) is the target")
    t0: float = Field(REFERENCE_TIME_S, gt=0, description="relaxation reference time after programming, s")
    relax_mean: float = Field(0.01, description="mean relative conductance loss per decade of time")
    relax_sigma: float = Field(0.01, ge=0, description="device-to-device spread of the relaxation rate")
    read_noise: float = Field(0.01, ge=0, description="relative read noise q")


def programming_spread(g_target: torch.Tensor, p: RRAMParams) -> torch.Tensor:
    """σ_P (relative, of the log-conductance) for targets ``g_target`` (µS): σ_on at G_max,
    σ_off at the off state and below, linear in between."""
    g_off = 0.0 if p.on_off_ratio is None else 1.0 / p.on_off_ratio
    g = (g_target / p.g_max).clamp(g_off, 1.0)
    return p.sigma_on + (p.sigma_off - p.sigma_on) * ((1 - g) / (1 - g_off))


@DEVICES.register("rram", RRAMParams)
class RRAMDevice(DeviceModel):
    """Filamentary RRAM: lognormal programming, log-time relaxation, read noise."""

    params: RRAMParams

    @property
    def on_off_ratio(self) -> float | None:
        return self.params.on_off_ratio

    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        p = self.params
        sigma = programming_spread(g_target, p)
        log_gain = sigma * draw_normal(rng, g_target, "prog")
        if p.mean_corrected:
            log_gain = log_gain - 0.5 * sigma * sigma
        g_prog = g_target * torch.exp(log_gain)
        rate = p.relax_mean + p.relax_sigma * draw_normal(rng, g_target, "relax")
        return {"g_prog": g_prog, "rate": rate}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.params
        decades = math.log10(max(t, p.t0) / p.t0)
        g = (state["g_prog"] * (1 - state["rate"] * decades)).clamp(min=0.0)
        return g, (g * p.read_noise if p.read_noise > 0 else None)

