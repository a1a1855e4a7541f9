"""Phase-change memory: programming noise, conductance drift and 1/f read noise.

The statistical PCM model of Nandakumar et al. (2019) and Joshi et al. (Nat. Commun.
11, 2473, 2020), as used by Mackin et al. (Nat. Commun. 2022). For a
normalised target ``g = G_T / G_max``:

- programming noise: ``σ_prog = (c0 + c1·g + c2·g²)·G_max/G_ref`` µS, the polynomial
  fitted at ``G_ref = 25 µS`` and scaled to the device's ``G_max`` (as the published
  model and aihwkit's ``PCMLikeNoiseModel`` do); ``G_P = max(G_T + σ_prog·z, 0)``
- drift exponent, drawn once at programming:
  ``μ_ν = clip(a_μ·ln g + b_μ, μ_min, μ_max)``, ``σ_ν = clip(a_σ·ln g + b_σ, σ_min, σ_max)``,
  ``ν = |μ_ν + σ_ν·z|``
- drift: ``G_D(t) = G_P·(t/t0)^(−ν)`` for ``t ≥ t0`` (earlier reads see no drift)
- 1/f read noise, drawn per read: ``Q_s = min(q / g_P^e, Q_max)`` with ``g_P = G_P/G_max``,
  ``σ_read = G_D·Q_s·√ln((t + t_read)/(2·t_read))``, ``G = max(G_D + σ_read·z, 0)``
- per input vector (``read_noise: per_vector``): 1/f noise is a process with stationary
  increments whose structure function has the same law, ``D(τ) = (G_D·Q_s)²·ln((τ +
  t_read)/(2·t_read))``: ``σ_read² = D(t)`` is a read's deviation from the programmed
  value, and two products ``Δ = vector_interval`` apart differ by noise of variance
  ``D(Δ)``. Split as a part common to every product of one read, of variance
  ``D(t) − D(Δ)/2``, and a part fresh for every product, of variance ``D(Δ)/2``, both
  parts match: each product's total variance is the per-read law ``D(t)`` and
  consecutive products differ by ``D(Δ)`` (:func:`vector_fresh_fraction`). Products
  further apart within one read also differ by only ``D(Δ)`` here, where the process
  would give ``D(k·Δ)``: the split keeps every product's variance and the neighbours'
  correlation exact, and understates how far products many intervals apart decorrelate
  (for 10⁴ products 1 µs apart, ``D(10 ms)`` is about ten times ``D(1 µs)``).

Every constant is a named parameter of :class:`PCMParams` with the published default.
The ``*_scale`` factors switch a mechanism off (0) or exaggerate it.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from pydantic import Field

from ..registry import Params
from .. import kernels
from ..kernels import pcm as pcm_kernels
from ..rng import ALIGN, Stream, aligned, chunks, draw_normal, window_width
from .base import DEVICES, DeviceModel, DeviceState, Mix, mixed_normal
from ..vocabulary import REFERENCE_TIME_S


class PCMDriftReadParams(Params):
    """Constants of PCM drift and 1/f read noise (Nandakumar et al. 2019; Joshi et al. 2020); shared with the table device."""

    g_max: float = Field(25.0, gt=0, description="largest conductance G_max, µS")
    t0: float = Field(REFERENCE_TIME_S, gt=0, description="drift reference time after programming, s")
    read_qs_coeff: float = Field(0.0088, ge=0, description="1/f read-noise amplitude q")
    read_qs_exponent: float = Field(0.65, description="1/f read-noise exponent e")
    read_qs_max: float = Field(0.2, ge=0, description="upper bound of Q_s")
    t_read: float = Field(250e-9, gt=0, description="duration of one read, s")
    prog_noise_scale: float = Field(1.0, ge=0, description="multiplies σ_prog (0 switches it off)")
    drift_scale: float = Field(1.0, ge=0, description="multiplies ν (0 switches drift off)")
    read_noise_scale: float = Field(1.0, ge=0, description="multiplies σ_read (0 switches it off)")
    vector_interval: float = Field(
        1e-6, gt=0, description="time between two successive matrix-vector products on one crossbar, s (read_noise: per_vector)"
    )


class PCMParams(PCMDriftReadParams):
    """Constants of the PCM model (Nandakumar et al. 2019; Joshi et al. 2020); conductances in µS, times in s."""

    prog_c0: float = Field(0.26348, description="programming-noise polynomial, constant term, µS")
    prog_c1: float = Field(1.9650, description="programming-noise polynomial, linear term, µS")
    prog_c2: float = Field(-1.1731, description="programming-noise polynomial, quadratic term, µS")
    prog_g_ref: float = Field(25.0, gt=0, description="G_max at which the σ_prog polynomial was fitted, µS (σ_prog scales by g_max / prog_g_ref)")
    mu_nu_slope: float = Field(-0.0155, description="mean drift exponent μ_ν = slope·ln(G_T/G_max) + intercept, clamped: its slope")
    mu_nu_intercept: float = Field(0.0244, description="μ_ν's intercept (at G_T = G_max)")
    mu_nu_min: float = Field(0.049, ge=0, description="μ_ν's lower clamp")
    mu_nu_max: float = Field(0.1, ge=0, description="μ_ν's upper clamp")
    sigma_nu_slope: float = Field(-0.0125, description="spread of the drift exponent σ_ν = slope·ln(G_T/G_max) + intercept, clamped: its slope")
    sigma_nu_intercept: float = Field(-0.0059, description="σ_ν's intercept (at G_T = G_max)")
    sigma_nu_min: float = Field(0.008, ge=0, description="σ_ν's lower clamp")
    sigma_nu_max: float = Field(0.045, ge=0, description="σ_ν's upper clamp")


    @property
    def prog_sigma_scale(self) -> float:
        """What multiplies the σ_prog polynomial: ``prog_noise_scale · g_max / prog_g_ref``."""
        return self.prog_noise_scale * (self.g_max / self.prog_g_ref)


DEFAULT = PCMParams()


def _normalised(g: torch.Tensor, p: PCMDriftReadParams) -> torch.Tensor:
    return (g / p.g_max).clamp(0.0, 1.0)


def programming_sigma(g_target: torch.Tensor, p: PCMParams = DEFAULT) -> torch.Tensor:
    """σ_prog (µS) for target conductances ``g_target`` (µS): the polynomial in the normalised
    target, scaled by ``g_max / prog_g_ref`` (and ``prog_noise_scale``)."""
    g = _normalised(g_target, p)
    return (p.prog_c0 + p.prog_c1 * g + p.prog_c2 * g * g) * p.prog_sigma_scale


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
    return _qs_of_floored(_floored(g_prog, p), p)


def _qs_of_floored(g: torch.Tensor, p: PCMDriftReadParams) -> torch.Tensor:
    """Q_s in place of floored normalised conductances ``g``: q/g^e as q·exp(−e·ln g), one
    vectorised ln and exp instead of a much slower scalar pow."""
    return g.log_().mul_(-p.read_qs_exponent).exp_().mul_(p.read_qs_coeff).clamp_(max=p.read_qs_max)


def read_noise_time_factor(t: float, p: PCMDriftReadParams = DEFAULT) -> float:
    """√ln((t + t_read)/(2·t_read)): 4.18 at 20 s, 4.77 at 1 h, 5.09 at 1 day, 5.64 at 1 year."""
    return math.sqrt(max(math.log((t + p.t_read) / (2.0 * p.t_read)), 0.0))


def vector_fresh_fraction(t: float, p: PCMDriftReadParams = DEFAULT) -> float:
    """The share of the 1/f read-noise variance at ``t`` that is fresh for every matrix-vector
    product, ``½·D(Δ)/D(t)`` with ``D(τ) = ln((τ + t_read)/(2·t_read))`` and
    ``Δ = vector_interval``; the rest is common to every product of one read. 1 where the
    read is no longer than the interval."""
    total = read_noise_time_factor(t, p) ** 2
    fresh = 0.5 * max(math.log((p.vector_interval + p.t_read) / (2.0 * p.t_read)), 0.0)
    return 1.0 if total <= fresh else fresh / total


def read_noise_correlation(times: Sequence[float], p: PCMDriftReadParams = DEFAULT, vector: bool = False) -> np.ndarray | None:
    """Correlation of one device's 1/f read noise between reads at ``times`` (s after
    programming, increasing). The noise of a read at t deviates from the programmed state
    with variance D(t), D(τ) = ln((τ + t_read)/(2·t_read)) (the structure function of
    :func:`read_noise_time_factor`, floored at 0), and two reads Δ apart differ with
    variance D(Δ), so ``Cov(t_k, t_m) = (D(t_k) + D(t_m) − D(|t_k − t_m|))/2``
    (the law the per-vector split uses within one read). With ``vector``, of the part each
    read's products share under ``read_noise: per_vector`` (its fresh part D(Δ)/2,
    Δ = ``vector_interval``, independent of everything, off the diagonal's variance).
    None without read noise."""
    if p.read_noise_scale == 0:
        return None

    def d(tau: float) -> float:
        return read_noise_time_factor(tau, p) ** 2

    v = np.array([d(t) for t in times])
    if (v <= 0).any():
        return None  # a read within t_read of programming: no noise yet
    n = len(times)
    cov = np.empty((n, n))
    for k in range(n):
        for m in range(n):
            cov[k, m] = v[k] if k == m else (v[k] + v[m] - d(abs(times[k] - times[m]))) / 2
    if vector:
        v = v - 0.5 * d(p.vector_interval)  # the shared part's variance at each time
        if (v <= 0).any():
            return None  # nothing shared: every product's noise is fresh
        cov[np.diag_indices(n)] = v
    return cov / np.sqrt(np.outer(v, v))


def drift_factor(nu: torch.Tensor, t: float, p: PCMDriftReadParams = DEFAULT) -> torch.Tensor:
    """(t/t0)^(−ν) = exp(−ν·ln(t/t0)), with no drift before t0."""
    return torch.exp(nu * -math.log(max(t, p.t0) / p.t0))


def _program_formula(
    g_target: torch.Tensor, z_prog: torch.Tensor, z_nu: torch.Tensor, p: PCMParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """``G_P = max(G_T + σ_prog·z, 0)`` and ``ν = |μ_ν + σ_ν·z'|`` from given normals."""
    g_prog = programming_sigma(g_target, p).mul_(z_prog)
    g_prog = torch.add(g_target, g_prog, out=g_prog).clamp_(min=0.0)  # G_T + σ·z, as written
    log_g = torch.log(_floored(g_target, p))
    nu = drift_sigma(g_target, p, log_g).mul_(z_nu)
    nu = torch.add(drift_mu(g_target, p, log_g), nu, out=nu).abs_().mul_(p.drift_scale)
    return g_prog, nu


def _program_constants(p: PCMParams) -> np.ndarray:
    """The constants :func:`kernels.pcm_program_finish` takes, by name
    (``kernels.pcm.PROGRAM_CONSTANTS``), as float32 (as the tensor code rounds them)."""
    values = [G_FLOOR if name == "floor" else getattr(p, name) for name in pcm_kernels.PROGRAM_CONSTANTS]
    return np.array(values, dtype=np.float32)


def _program_stream(g_target: torch.Tensor, rng: Stream, p: PCMParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Program ``(C, n)`` targets (µS) from chip streams: ``(g_prog, nu, qs)``, each ``(C, n)``
    contiguous. On the CPU, every chip at once in windows of aligned columns (``rng.window_width``) with the
    arithmetic between ln, cos and exp in compiled passes (``kernels.pcm``); elsewhere the
    tensor formulas chip by chip, in cache-sized pieces (``rng.chunks``)."""
    g_prog, nu, qs = (torch.empty(g_target.shape, dtype=g_target.dtype, device=g_target.device) for _ in range(3))
    s_prog, s_nu = rng.child("prog"), rng.child("nu")
    if g_target.device.type != "cpu" or g_target.dtype != torch.float32:
        for c, sl in chunks(*g_target.shape):
            one, w = slice(c, c + 1), sl.stop - sl.start
            z_prog, z_nu = s_prog.select(one).normal_range(sl.start, w)[0], s_nu.select(one).normal_range(sl.start, w)[0]
            gp, n = _program_formula(g_target[c, sl], z_prog, z_nu, p)
            g_prog[c, sl], nu[c, sl], qs[c, sl] = gp, n, read_noise_qs(gp, p)
        return g_prog, nu, qs
    consts = _program_constants(p)
    chips, n = g_prog.shape
    # targets the same on every chip (a stride-0 view: no device variation): one row, read by every chip
    targets = (g_target[:1] if chips > 1 and g_target.stride(0) == 0 else g_target).contiguous()
    rows = targets.shape[0]
    step = window_width(3 * chips, n)  # targets per window, every chip at once
    logs, cosines = torch.ones(2, chips, step), torch.ones(2, chips, step)  # the two normals' ln u and cos θ
    log_g = torch.ones(rows, step)  # ln of the floored normalised targets
    logs_np, cos_np, log_g_np = logs.numpy(), cosines.numpy(), log_g.numpy()
    gt_np, gp_np, nu_np, qs_np = targets.numpy(), g_prog.numpy(), nu.numpy(), qs.numpy()
    first = np.zeros(1, dtype=np.int64)
    for a in range(0, n, step):
        w = min(step, n - a)
        span = aligned(w)  # ln, cos and exp on whole aligned groups, as normal_range
        first[0] = a
        kernels.window_fields(s_prog.keys, first, span, logs[0:1], cosines[0:1])
        kernels.window_fields(s_nu.keys, first, span, logs[1:2], cosines[1:2])
        kernels.pcm_floor_normalised(gt_np, a, w, consts[pcm_kernels.G_MAX], consts[pcm_kernels.FLOOR], log_g_np)
        logs[:, :, :span].log_(), cosines[:, :, :span].cos_(), log_g[:, :span].log_()
        kernels.pcm_program_finish(gt_np, log_g_np, a, w, logs_np, cos_np, consts, gp_np, nu_np, qs_np)
        _qs_of_floored(qs[:, a : a + w], p)  # the kernel left the floored normalised G_P there
    return g_prog, nu, qs


def program(
    g_target: torch.Tensor, rng: Stream, params: PCMParams = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program PCM devices: returns ``(g_prog, nu)``, programmed conductances (µS) and
    drift exponents, both shaped like ``g_target`` (µS; leading dimension: chip)."""
    if isinstance(rng, Stream):
        g_prog, nu, _ = _program_stream(g_target.reshape(g_target.shape[0], -1).contiguous(), rng, params)
        return g_prog.view(g_target.shape), nu.view(g_target.shape)
    return _program_formula(g_target, draw_normal(rng, g_target, "prog"), draw_normal(rng, g_target, "nu"), params)


def drifted_and_sigma(
    g_prog: torch.Tensor, nu: torch.Tensor, t_seconds: float, params: PCMDriftReadParams = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drifted conductance G_D(t) and the 1/f read-noise σ_read(t), both µS."""
    g_drift = g_prog * drift_factor(nu, t_seconds, params) if params.drift_scale > 0 else g_prog
    if params.read_noise_scale == 0:
        return g_drift, None
    sigma = g_drift * read_noise_qs(g_prog, params) * (read_noise_time_factor(t_seconds, params) * params.read_noise_scale)
    return g_drift, sigma


def _read_formula(
    g_prog: torch.Tensor, nu: torch.Tensor, qs: torch.Tensor, t: float, zs: torch.Tensor | None,
    p: PCMDriftReadParams, out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``G = max(G_D + G_D·Q_s·zs, 0) = G_D·max(1 + Q_s·zs, 0)`` with ``G_D = G_P·exp(−ν·ln(t/t0))``
    and ``zs`` normals of standard deviation √ln((t + t_read)/(2·t_read))·read_noise_scale
    (consumed); written to ``out`` when given."""
    if p.drift_scale > 0:
        g = torch.mul(nu, -math.log(max(t, p.t0) / p.t0), out=out).exp_().mul_(g_prog)
    else:
        g = g_prog.clone() if out is None else out.copy_(g_prog)
    if zs is not None:
        g.mul_(zs.mul_(qs).add_(1.0).clamp_(min=0.0))
    return g


def read_noise_std(t: float, p: PCMDriftReadParams) -> float:
    """Standard deviation of the normals that scale Q_s in a read at ``t``."""
    return read_noise_time_factor(t, p) * p.read_noise_scale


def _read_windows(
    nu: torch.Tensor, keys: torch.Tensor, starts: np.ndarray, span: int, log_ratio: float, noisy: bool,
    p: PCMDriftReadParams, drift: torch.Tensor, log_u: torch.Tensor, cos_theta: torch.Tensor,
) -> None:  # fmt: skip
    """For columns ``starts[d] .. starts[d]+span-1`` of every chip's row of ``nu`` ``(C, n)``
    (``span`` a multiple of the alignment) on the CPU: the drift factors exp(−ν·ln(t/t0))
    into ``drift[d, :, :span]`` and the read normals' ln u and cos θ (the same stream
    elements) into ``log_u[d, :, :span]`` and ``cos_theta[d, :, :span]`` — the
    ``(windows, C, ≥ span)`` workspaces the compiled read passes take (``drift`` holds
    ones where nothing drifts). One compiled pass (``kernels.pcm_read_windows``), then
    PyTorch's vectorised exp, ln and cos."""
    drifts = p.drift_scale > 0 and log_ratio > 0  # at t ≤ t0 the factors stay 1 (exp(−ν·0) = 1 exactly)
    if starts.min() < 0 or starts.max() + span > nu.shape[1]:  # the kernel does not check bounds
        raise ValueError(f"read window of {span} columns from {starts.tolist()} outside rows of {nu.shape[1]}")
    kernels.pcm_read_windows(keys.detach().numpy().view(np.uint64), nu.numpy(), starts, span, np.float32(-log_ratio), drifts,
                             noisy, drift.numpy(), log_u.numpy(), cos_theta.numpy())  # fmt: skip
    if drifts:
        drift[:, :, :span].exp_()
    if noisy:
        log_u[:, :, :span].log_(), cos_theta[:, :, :span].cos_()


def _noise_windows(
    nu: torch.Tensor, keys: torch.Tensor, starts: np.ndarray, span: int, log_ratio: float, noisy: bool, mix: Mix | None,
    p: PCMDriftReadParams, drift: torch.Tensor, log_u: torch.Tensor, cos_theta: torch.Tensor, spare: torch.Tensor | None,
) -> None:  # fmt: skip
    """:func:`_read_windows` for a read whose normals come from the stream ``keys``, or, with
    ``mix`` (:data:`~mcstudy.hardware.base.Mix`), for a read whose standard normals are
    ``Σ r_m·z_m`` of the streams it names: those are left in ``cos_theta`` with ``ln u = −½``,
    so that the compiled passes' ``√(c·ln u)·cos θ`` with ``c = −2s²`` is ``s·Σ r_m·z_m``.
    ``spare``: a ``(2, windows, C, ≥ span)`` workspace for each stream's fields."""
    if mix is None or not noisy:
        _read_windows(nu, keys, starts, span, log_ratio, noisy, p, drift, log_u, cos_theta)
        return
    assert spare is not None
    _read_windows(nu, keys, starts, span, log_ratio, False, p, drift, log_u, cos_theta)  # the drift factors alone
    total = cos_theta[:, :, :span].zero_()
    u, theta = spare[0, :, :, :span], spare[1, :, :, :span]
    for r, stream in mix:
        _read_windows(nu, stream.child("read").keys, starts, span, 0.0, True, p, drift, spare[0], spare[1])
        total.add_(u.mul_(-2.0).sqrt_().mul_(theta).mul_(r))
    log_u[:, :, :span].fill_(-0.5)


def _read_spans(n: int, planes: int, total: int, step: int) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray]]:
    """Windows of ``step`` weights over ``planes`` device planes of ``n`` each, laid out
    back to back in rows of ``total`` columns: ``(a, w, span, starts, off)`` for weights
    ``a .. a+w-1``, where plane ``d``'s window of ``span`` columns (a multiple of the
    alignment, inside the row) starts at column ``starts[d]`` and holds weight ``a`` at
    ``off[d]`` (the arrays are reused from window to window)."""
    starts, off = np.zeros(planes, dtype=np.int64), np.zeros(planes, dtype=np.int64)
    for a in range(0, n, step):
        w = min(step, n - a)
        span = aligned(w)
        for d in range(planes):
            starts[d] = min(d * n + a, total - span)
            off[d] = d * n + a - starts[d]
        yield a, w, span, starts, off


def _read_stream(
    g_prog: torch.Tensor, nu: torch.Tensor, qs: torch.Tensor, t: float, rng: Stream, p: PCMDriftReadParams,
    out: torch.Tensor | None = None, mix: Mix | None = None,
) -> torch.Tensor:  # fmt: skip
    """Read ``(C, n)`` programmed devices at ``t`` with read noise from chip streams (or the
    combination ``mix`` names). On the CPU, every chip at once in windows of aligned columns
    (``rng.window_width``), the arithmetic after ln, cos and exp in one compiled pass
    (``kernels.pcm_read_finish``); elsewhere :func:`_read_formula` chip by chip."""
    s = read_noise_std(t, p)
    stream = rng.child("read")
    out = torch.empty_like(g_prog) if out is None else out
    chips, n = g_prog.shape
    tensors = (g_prog, nu, qs, out)
    if g_prog.device.type != "cpu" or g_prog.dtype != torch.float32 or n < ALIGN or not all(x.is_contiguous() for x in tensors):
        for c, sl in chunks(chips, n):
            zs = None
            if s > 0:
                one = slice(c, c + 1)
                sources = [(1.0, stream)] if mix is None else [(r, m.child("read")) for r, m in mix]
                for r, src in sources:
                    z = src.select(one).normal_range(sl.start, sl.stop - sl.start, g_prog.dtype, s)[0]
                    zs = z if mix is None else (z.mul_(r) if zs is None else zs.add_(z.mul_(r)))
            _read_formula(g_prog[c, sl], nu[c, sl], qs[c, sl], t, zs, p, out=out[c, sl])
        return out
    log_ratio, c2 = math.log(max(t, p.t0) / p.t0), np.float32(-2.0 * s * s)
    step = window_width(chips, n)
    ws = torch.empty(3, 1, chips, step)  # drift factors, ln u, cos θ: reused by every window
    ws[0].fill_(1.0)
    spare = torch.empty(2, 1, chips, step) if mix is not None else None
    gp_np, qs_np, out_np, ws_np = g_prog.numpy(), qs.numpy(), out.numpy(), ws.numpy()
    for a, w, span, starts, off in _read_spans(n, 1, n, step):
        _noise_windows(nu, stream.keys, starts, span, log_ratio, s > 0, mix, p, ws[0], ws[1], ws[2], spare)
        kernels.pcm_read_finish(gp_np, qs_np, a, w, ws_np[0, 0], ws_np[1, 0], ws_np[2, 0], int(off[0]), c2, s > 0, out_np)
    return out


def read(
    g_prog: torch.Tensor, nu: torch.Tensor, t_seconds: float, rng: Stream, params: PCMDriftReadParams = DEFAULT
) -> torch.Tensor:
    """Read programmed devices ``t_seconds`` after programming: drift, then 1/f read noise."""
    qs = read_noise_qs(g_prog, params)
    if isinstance(rng, Stream):
        flat = [x.reshape(x.shape[0], -1).contiguous() for x in (g_prog, nu, qs)]
        return _read_stream(*flat, t_seconds, rng, params).view(g_prog.shape)
    s = read_noise_std(t_seconds, params)
    return _read_formula(g_prog, nu, qs, t_seconds, draw_normal(rng, g_prog, "read", s) if s > 0 else None, params)


@DEVICES.register("pcm", PCMParams)
class PCMDevice(DeviceModel):
    """Phase-change memory (Nandakumar et al. 2019; Joshi et al. 2020). Q_s depends on the
    programmed conductance only and is computed once, at programming."""

    params: PCMParams

    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        p = self.params
        if isinstance(rng, Stream) and g_target.dim() == 2:
            g_prog, nu, qs = _program_stream(g_target, rng, p)
            return {"g_prog": g_prog, "nu": nu, "qs": qs}
        g_prog, nu = program(g_target, rng, p)
        return {"g_prog": g_prog, "nu": nu, "qs": read_noise_qs(g_prog, p)}

    def read_noise_correlation(self, times: Sequence[float], vector: bool = False) -> np.ndarray | None:
        return read_noise_correlation(times, self.params, vector)

    def read(self, state: DeviceState, t: float, rng: Stream, out: torch.Tensor | None = None, mix: Mix | None = None) -> torch.Tensor:
        p = self.params
        g_prog, nu, qs = state["g_prog"], state["nu"], state["qs"]
        if isinstance(rng, Stream) and g_prog.dim() == 2:
            return _read_stream(g_prog, nu, qs, t, rng, p, out, mix)
        s = read_noise_std(t, p)
        zs = None if s == 0 else draw_normal(rng, g_prog, "read", s) if mix is None else mixed_normal(mix, g_prog, "read").mul_(s)
        return _read_formula(g_prog, nu, qs, t, zs, p)

    def read_decoded(
        self, state: DeviceState, t: float, rng: Stream, shape: tuple[int, int, int], coeffs: list[float], g_min: float,
        scale: torch.Tensor, mix: Mix | None = None,
    ) -> torch.Tensor | None:  # fmt: skip
        """On the CPU: a read decoded in the same pass (``kernels.pcm_read_decode_finish``),
        so the conductances never go to memory. Every plane of every chip is computed at
        once, in windows of weights whose length is a multiple of the alignment, so ln, cos
        and exp take the same SIMD path as in :meth:`read` and the result has the same bits
        as :meth:`read` + ``Mapping.decode_flat`` (and a chip the same bits in any block)."""
        g_prog, nu, qs = state["g_prog"], state["nu"], state["qs"]
        tensors = (g_prog, nu, qs, scale)
        if g_prog.dim() != 2 or any(x.device.type != "cpu" or x.dtype != torch.float32 for x in tensors):
            return None
        p = self.params
        s = read_noise_std(t, p)
        keys = rng.child("read").keys
        planes, n_out, n_in = shape
        n, (chips, total) = n_out * n_in, g_prog.shape
        step = window_width(planes * chips, n)  # weights per window: every plane of every chip at once
        drift_ws, u_ws, theta_ws = torch.ones(planes, chips, step), torch.empty(planes, chips, step), torch.empty(planes, chips, step)
        out = torch.empty(chips, n_out, n_in)
        coeff = np.array(coeffs, dtype=np.float32)
        unit = np.array([1 if c == 1.0 else -1 if c == -1.0 else 0 for c in coeffs], dtype=np.int8)
        scale_np = scale.reshape(-1).contiguous().numpy()
        nu_c, gp_np, qs_np = nu.contiguous(), g_prog.contiguous().numpy(), qs.contiguous().numpy()
        log_ratio, c2, gm = math.log(max(t, p.t0) / p.t0), np.float32(-2.0 * s * s), np.float32(g_min)
        ws_np, out_np = (drift_ws.numpy(), u_ws.numpy(), theta_ws.numpy()), out.view(chips, n).numpy()
        spare = torch.empty(2, planes, chips, step) if mix is not None else None
        for a, w, span, starts, off in _read_spans(n, planes, total, step):
            _noise_windows(nu_c, keys, starts, span, log_ratio, s > 0, mix, p, drift_ws, u_ws, theta_ws, spare)
            kernels.pcm_read_decode_finish(gp_np, qs_np, *ws_np, off, n, a, w, coeff, unit, gm, scale_np, c2, s > 0, out_np)
        return out

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return drifted_and_sigma(state["g_prog"], state["nu"], t, self.params)

    def vector_fresh_fraction(self, t: float) -> float:
        return vector_fresh_fraction(t, self.params)

