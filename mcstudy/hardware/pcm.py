"""Phase-change memory: programming noise, conductance drift and 1/f read noise.

The statistical PCM model of Nandakumar et al. (2019) and Joshi et al. (Nat. Commun.
11, 2473, 2020), as used by Mackin et al. (Nat. Commun. 2022); SCIENCE.md §2. For a
normalised target ``g = G_T / G_max``:

- programming noise: ``σ_prog = c0 + c1·g + c2·g²`` µS; ``G_P = max(G_T + σ_prog·z, 0)``
- drift exponent, drawn once at programming:
  ``μ_ν = clip(a_μ·ln g + b_μ, μ_min, μ_max)``, ``σ_ν = clip(a_σ·ln g + b_σ, σ_min, σ_max)``,
  ``ν = |μ_ν + σ_ν·z|``
- drift: ``G_D(t) = G_P·(t/t0)^(−ν)`` for ``t ≥ t0`` (earlier reads see no drift)
- 1/f read noise, drawn per read: ``Q_s = min(q / g_P^e, Q_max)`` with ``g_P = G_P/G_max``,
  ``σ_read = G_D·Q_s·√ln((t + t_read)/(2·t_read))``, ``G = max(G_D + σ_read·z, 0)``

Every constant is a named parameter of :class:`PCMParams` with the published default.
The ``*_scale`` factors switch a mechanism off (0) or exaggerate it.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream, draw_normal
from .base import DEVICES, DeviceModel, DeviceState


class PCMDriftReadParams(Params):
    """Constants of PCM drift and 1/f read noise (SCIENCE.md §2); shared with the table device."""

    g_max: float = Field(25.0, gt=0, description="largest conductance G_max, µS")
    t0: float = Field(20.0, gt=0, description="drift reference time after programming, s")
    read_qs_coeff: float = Field(0.0088, ge=0, description="1/f read-noise amplitude q")
    read_qs_exponent: float = Field(0.65, description="1/f read-noise exponent e")
    read_qs_max: float = Field(0.2, ge=0, description="upper bound of Q_s")
    t_read: float = Field(250e-9, gt=0, description="duration of one read, s")
    prog_noise_scale: float = Field(1.0, ge=0, description="multiplies σ_prog (0 switches it off)")
    drift_scale: float = Field(1.0, ge=0, description="multiplies ν (0 switches drift off)")
    read_noise_scale: float = Field(1.0, ge=0, description="multiplies σ_read (0 switches it off)")


class PCMParams(PCMDriftReadParams):
    """Constants of the PCM model (SCIENCE.md §2); conductances in µS, times in s."""

    prog_c0: float = Field(0.26348, description="programming-noise polynomial, constant term, µS")
    prog_c1: float = Field(1.9650, description="programming-noise polynomial, linear term, µS")
    prog_c2: float = Field(-1.1731, description="programming-noise polynomial, quadratic term, µS")
    mu_nu_slope: float = -0.0155
    mu_nu_intercept: float = 0.0244
    mu_nu_min: float = Field(0.049, ge=0)
    mu_nu_max: float = Field(0.1, ge=0)
    sigma_nu_slope: float = -0.0125
    sigma_nu_intercept: float = -0.0059
    sigma_nu_min: float = Field(0.008, ge=0)
    sigma_nu_max: float = Field(0.045, ge=0)


DEFAULT = PCMParams()


def _normalised(g: torch.Tensor, p: PCMDriftReadParams) -> torch.Tensor:
    return (g / p.g_max).clamp(0.0, 1.0)


def programming_sigma(g_target: torch.Tensor, p: PCMParams = DEFAULT) -> torch.Tensor:
    """σ_prog (µS) for target conductances ``g_target`` (µS)."""
    g = _normalised(g_target, p)
    return (p.prog_c0 + p.prog_c1 * g + p.prog_c2 * g * g) * p.prog_noise_scale


G_FLOOR = 1e-6
"""Normalised conductance (0.025 nS at G_max = 25 µS) below which the logarithms and powers
below are taken at the floor: there μ_ν, σ_ν and Q_s already sit at their clip limits
(for the published coefficients), so no value changes — and a CPU takes about ten times
as long for log(0) as for a normal number, while half the devices of a differential pair
are programmed to 0."""


def _floored(g: torch.Tensor, p: PCMDriftReadParams) -> torch.Tensor:
    return _normalised(g, p).clamp_(min=G_FLOOR)


def drift_mu(g_target: torch.Tensor, p: PCMParams = DEFAULT, log_g: torch.Tensor | None = None) -> torch.Tensor:
    """Mean drift exponent μ_ν for target conductances (µS); ``log_g``: their ln(g/G_max), if known."""
    log_g = torch.log(_floored(g_target, p)) if log_g is None else log_g
    return (p.mu_nu_slope * log_g + p.mu_nu_intercept).clamp_(p.mu_nu_min, p.mu_nu_max)


def drift_sigma(g_target: torch.Tensor, p: PCMParams = DEFAULT, log_g: torch.Tensor | None = None) -> torch.Tensor:
    """Spread σ_ν of the drift exponent for target conductances (µS)."""
    log_g = torch.log(_floored(g_target, p)) if log_g is None else log_g
    return (p.sigma_nu_slope * log_g + p.sigma_nu_intercept).clamp_(p.sigma_nu_min, p.sigma_nu_max)


def read_noise_qs(g_prog: torch.Tensor, p: PCMDriftReadParams = DEFAULT) -> torch.Tensor:
    """Relative 1/f read-noise amplitude Q_s for programmed conductances (µS)."""
    return (p.read_qs_coeff / _floored(g_prog, p).pow_(p.read_qs_exponent)).clamp_(max=p.read_qs_max)


def read_noise_time_factor(t: float, p: PCMDriftReadParams = DEFAULT) -> float:
    """√ln((t + t_read)/(2·t_read)): 4.18 at 20 s, 4.77 at 1 h, 5.09 at 1 day, 5.64 at 1 year."""
    return math.sqrt(max(math.log((t + p.t_read) / (2.0 * p.t_read)), 0.0))


def drift_factor(nu: torch.Tensor, t: float, p: PCMDriftReadParams = DEFAULT) -> torch.Tensor:
    """(t/t0)^(−ν), with no drift before t0."""
    return torch.pow(max(t, p.t0) / p.t0, -nu)


def program(
    g_target: torch.Tensor, rng: Stream | torch.Generator, params: PCMParams = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program PCM devices: returns ``(g_prog, nu)``, programmed conductances (µS) and
    drift exponents, both shaped like ``g_target`` (µS)."""
    z_prog = draw_normal(rng, g_target, "prog")
    z_nu = draw_normal(rng, g_target, "nu")
    g_prog = programming_sigma(g_target, params).mul_(z_prog)
    g_prog = torch.add(g_target, g_prog, out=g_prog).clamp_(min=0.0)  # G_T + σ·z, as written
    log_g = torch.log(_floored(g_target, params))
    nu = drift_sigma(g_target, params, log_g).mul_(z_nu)
    nu = torch.add(drift_mu(g_target, params, log_g), nu, out=nu).abs_().mul_(params.drift_scale)
    return g_prog, nu


def drifted_and_sigma(
    g_prog: torch.Tensor, nu: torch.Tensor, t_seconds: float, params: PCMDriftReadParams = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drifted conductance G_D(t) and the 1/f read-noise σ_read(t), both µS."""
    g_drift = g_prog * drift_factor(nu, t_seconds, params) if params.drift_scale > 0 else g_prog
    if params.read_noise_scale == 0:
        return g_drift, None
    sigma = g_drift * read_noise_qs(g_prog, params) * (read_noise_time_factor(t_seconds, params) * params.read_noise_scale)
    return g_drift, sigma


def read(
    g_prog: torch.Tensor, nu: torch.Tensor, t_seconds: float, rng: Stream | torch.Generator, params: PCMDriftReadParams = DEFAULT
) -> torch.Tensor:
    """Read programmed devices ``t_seconds`` after programming: drift, then 1/f read noise."""
    g_drift, sigma = drifted_and_sigma(g_prog, nu, t_seconds, params)
    if sigma is None:
        return g_drift
    return (g_drift + sigma * draw_normal(rng, g_drift, "read")).clamp(min=0.0)


_READ_CHUNK = 8192  # devices per chunk of a fused read: a multiple of 128 (whole aligned normal pairs)


@DEVICES.register("pcm", PCMParams)
class PCMDevice(DeviceModel):
    """Phase-change memory (Nandakumar et al. 2019; Joshi et al. 2020)."""

    params: PCMParams


    def program(self, g_target: torch.Tensor, rng: Stream | torch.Generator) -> DeviceState:
        g_prog, nu = program(g_target, rng, self.params)
        # Q_s depends on the programmed conductance only: computed once here, not per read
        return {"g_prog": g_prog, "nu": nu, "qs": read_noise_qs(g_prog, self.params)}

    def read(self, state: DeviceState, t: float, rng: Stream | torch.Generator) -> torch.Tensor:
        """:func:`read` fused and run in cache-sized chunks of the per-chip flat layout,
        with Q_s from programming: the same operations in the same order on the same
        normals (each chunk takes its elements of the read's stream), so the same numbers
        as the unfused form, several times faster for large blocks."""
        p = self.params
        g_prog, nu, qs = state["g_prog"], state["nu"], state.get("qs")
        if not isinstance(rng, Stream) or qs is None or g_prog.dim() != 2:
            return super().read(state, t, rng)
        base = max(t, p.t0) / p.t0
        noise = read_noise_time_factor(t, p) * p.read_noise_scale
        stream = rng.child("read")
        out = torch.empty_like(g_prog)
        for a in range(0, g_prog.shape[1], _READ_CHUNK):
            sl = slice(a, a + _READ_CHUNK)
            g = out[:, sl]
            if p.drift_scale > 0:
                torch.pow(base, nu[:, sl].neg(), out=g)
                torch.mul(g_prog[:, sl], g, out=g)  # G_P·(t/t0)^(−ν)
            else:
                g.copy_(g_prog[:, sl])
            if p.read_noise_scale != 0:
                sigma = torch.mul(g, qs[:, sl]).mul_(noise)
                sigma.mul_(stream.normal_range(a, g.shape[1], dtype=g.dtype))
                g.add_(sigma).clamp_(min=0.0)
        return out

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return drifted_and_sigma(state["g_prog"], state["nu"], t, self.params)

    def drifts(self) -> bool:
        return self.params.drift_scale > 0
