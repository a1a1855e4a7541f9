"""Compiled passes of the PCM model's programming and reads (``hardware/pcm.py`` holds
the readable formulas, with their equations and sources).

Each pass does the tensor formula's float32 operations in the same order (no fast-math,
no fused multiply-add), between PyTorch's vectorised ln, cos and exp, so it gives the
same bits as ``pcm._program_formula`` and ``pcm._read_formula``, which run on other
devices; ``tests/test_physics.py`` checks both. Programming takes its constants by name
(``PROGRAM_CONSTANTS``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .generator import _fields_row

PROGRAM_CONSTANTS = (
    "g_max", "prog_c0", "prog_c1", "prog_c2", "prog_sigma_scale", "mu_nu_slope", "mu_nu_intercept", "mu_nu_min",
    "mu_nu_max", "sigma_nu_slope", "sigma_nu_intercept", "sigma_nu_min", "sigma_nu_max", "drift_scale", "floor",
)  # fmt: skip
"""The constants :func:`pcm_program_finish` takes, by name (a ``PCMParams`` field, or
``floor``: the floor of normalised conductances), in the order of its array ``p``."""
(
    G_MAX, PROG_C0, PROG_C1, PROG_C2, PROG_SIGMA_SCALE, MU_NU_SLOPE, MU_NU_INTERCEPT, MU_NU_MIN, MU_NU_MAX,
    SIGMA_NU_SLOPE, SIGMA_NU_INTERCEPT, SIGMA_NU_MIN, SIGMA_NU_MAX, DRIFT_SCALE, FLOOR,
) = range(len(PROGRAM_CONSTANTS))  # fmt: skip


@njit(nogil=True, cache=True, error_model="numpy")
def pcm_read_windows(
    keys: np.ndarray, nu: np.ndarray, starts: np.ndarray, span: int, minus_log_ratio: np.float32, drifts: bool,
    noisy: bool, drift: np.ndarray, u: np.ndarray, theta: np.ndarray,
) -> None:  # fmt: skip
    """What a PCM read needs before PyTorch's exp, ln and cos, for columns ``starts[d] ..
    starts[d]+span-1`` of every chip's row of ``nu`` ``(chips, n)``: ``−ν·ln(t/t0)`` into
    ``drift[d, c, :span]`` (``torch.mul``'s float32 product) and the read normals' fields
    (the same stream elements) into ``u[d, c, :span]``, ``theta[d, c, :span]``."""
    for d in range(starts.shape[0]):
        first = starts[d]
        for c in range(keys.shape[0]):
            if drifts:
                src, dst = nu[c, first : first + span], drift[d, c]
                for j in range(span):
                    dst[j] = src[j] * minus_log_ratio
            if noisy:
                _fields_row(keys[c], first, span, u[d, c], theta[d, c])


@njit(inline="always", cache=True, error_model="numpy")
def _pcm_conductance(
    g_prog: np.float32, drift: np.float32, qs: np.float32, log_u: np.float32, cos_theta: np.float32, c: np.float32, noisy: bool
) -> np.float32:
    """``(d·G_P)·max(z·Q_s + 1, 0)`` with ``z = √(c·ln u)·cos θ`` (``pcm._read_formula``'s order)."""
    g = drift * g_prog
    if noisy:
        z = np.sqrt(log_u * c) * cos_theta
        g = g * max(z * qs + np.float32(1.0), np.float32(0.0))
    return g


@njit(nogil=True, cache=True, error_model="numpy")
def pcm_read_finish(
    g_prog: np.ndarray, qs: np.ndarray, a: int, w: int, drift: np.ndarray, log_u: np.ndarray, cos_theta: np.ndarray,
    off: int, c: np.float32, noisy: bool, out: np.ndarray,
) -> None:  # fmt: skip
    """PCM read (``pcm._read_formula``) of columns ``a..a+w-1`` of ``g_prog`` ``(chips, n)``
    into the same columns of ``out``, given the drift factors ``exp(−ν·ln(t/t0))`` and the
    normals' ``ln u``, ``cos θ`` of those devices from column ``off`` of ``drift``,
    ``log_u``, ``cos_theta`` ``(chips, ≥ off + w)``:
    ``G = (d·G_P)·max(z·Q_s + 1, 0)``, ``z = √(c·ln u)·cos θ`` — the tensor formula's
    operations in its order, so the same float32 results."""
    for r in range(out.shape[0]):  # row slices: unit-stride loops that vectorise
        gp, q, o = g_prog[r, a : a + w], qs[r, a : a + w], out[r, a : a + w]
        dr, lu, ct = drift[r, off : off + w], log_u[r, off : off + w], cos_theta[r, off : off + w]
        for j in range(w):
            o[j] = _pcm_conductance(gp[j], dr[j], q[j], lu[j], ct[j], c, noisy)


@njit(nogil=True, cache=True, error_model="numpy")
def pcm_read_decode_finish(
    g_prog: np.ndarray, qs: np.ndarray, drift: np.ndarray, log_u: np.ndarray, cos_theta: np.ndarray, off: np.ndarray,
    n: int, a: int, w: int, coeff: np.ndarray, unit: np.ndarray, g_min: np.float32, scale: np.ndarray, c: np.float32,
    noisy: bool, out: np.ndarray,
) -> None:  # fmt: skip
    """A PCM read of every device of weights ``a..a+w-1`` of every chip, decoded at once into
    ``out[chip, a:a+w]``: device ``d`` of weight ``k`` sits at ``d·n + k`` of a chip's row of
    ``g_prog``/``qs`` ``(chips, devices)``; ``drift[d, chip]``, ``log_u[d, chip]``,
    ``cos_theta[d, chip]`` hold plane ``d``'s devices from column ``off[d]`` on. Each
    conductance as :func:`pcm_read_finish`, then ``Mapping.decode_flat``'s arithmetic in
    its order: ``((G₀ − G_min)·c₀ ± … )·scale[k]``, where a coefficient of ±1 (``unit``) is
    an addition or subtraction, as there."""
    sc = scale[a : a + w]
    for ch in range(out.shape[0]):  # row slices: unit-stride loops that vectorise
        o = out[ch, a : a + w]
        for d in range(coeff.shape[0]):  # plane by plane: each weight's sum still runs in plane order
            i0, m0, cd, ud = d * n + a, off[d], coeff[d], unit[d]
            gp, q = g_prog[ch, i0 : i0 + w], qs[ch, i0 : i0 + w]
            dr, lu, ct = drift[d, ch, m0 : m0 + w], log_u[d, ch, m0 : m0 + w], cos_theta[d, ch, m0 : m0 + w]
            if d == 0:
                for j in range(w):
                    o[j] = (_pcm_conductance(gp[j], dr[j], q[j], lu[j], ct[j], c, noisy) - g_min) * cd
            elif ud == 1:
                for j in range(w):
                    o[j] = o[j] + (_pcm_conductance(gp[j], dr[j], q[j], lu[j], ct[j], c, noisy) - g_min)
            elif ud == -1:
                for j in range(w):
                    o[j] = o[j] - (_pcm_conductance(gp[j], dr[j], q[j], lu[j], ct[j], c, noisy) - g_min)
            else:
                for j in range(w):
                    o[j] = o[j] + (_pcm_conductance(gp[j], dr[j], q[j], lu[j], ct[j], c, noisy) - g_min) * cd
        for j in range(w):
            o[j] = o[j] * sc[j]


@njit(nogil=True, cache=True, error_model="numpy")
def pcm_floor_normalised(g: np.ndarray, a: int, w: int, g_max: np.float32, floor: np.float32, out: np.ndarray) -> None:
    """``max(clip(g/G_max, 0, 1), floor)`` (``pcm._floored``) of columns ``a..a+w-1`` of ``g``
    ``(rows, n)`` into ``out[:, :w]``."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for r in range(g.shape[0]):
        gr, o = g[r, a : a + w], out[r]
        for j in range(w):
            o[j] = max(min(max(gr[j] / g_max, zero), one), floor)


@njit(nogil=True, cache=True, error_model="numpy")
def pcm_program_finish(
    g_target: np.ndarray, log_g: np.ndarray, a: int, w: int, logs: np.ndarray, cosines: np.ndarray, p: np.ndarray,
    g_prog: np.ndarray, nu: np.ndarray, g_norm: np.ndarray,
) -> None:  # fmt: skip
    """PCM programming (``pcm._program_formula``) of columns ``a..a+w-1`` of targets
    ``g_target`` ``(chips | 1, n)`` into the same columns of ``g_prog`` and ``nu``
    ``(chips, n)``, given ``log_g`` = ``ln g`` of the floored normalised targets
    ``(chips | 1, ≥ w)`` and ``logs`` = ``ln u`` and ``cosines`` = ``cos θ`` of the two
    normals (``[0]``: programming, ``[1]``: drift exponent; each ``(chips, ≥ w)``). A
    single row of targets (and ``log_g``) is every chip's. Writes
    ``G_P = max(G_T + σ_prog·z, 0)``, ``ν = |μ_ν + σ_ν·z'|·drift_scale`` and the floored
    normalised ``G_P`` (for Q_s) into the same columns of ``g_norm`` ``(chips, n)``. ``p``
    (float32): the constants named in ``PROGRAM_CONSTANTS`` (σ_prog's scale is
    prog_noise_scale·g_max/prog_g_ref). The normals as :func:`box_muller_finish`, then
    the tensor formula's operations in its order, so the same float32 results."""
    minus_two = np.float32(-2.0)
    g_max, c0, c1, c2, pscale = p[G_MAX], p[PROG_C0], p[PROG_C1], p[PROG_C2], p[PROG_SIGMA_SCALE]
    mus, mui, mumin, mumax = p[MU_NU_SLOPE], p[MU_NU_INTERCEPT], p[MU_NU_MIN], p[MU_NU_MAX]
    sds, sdi, sdmin, sdmax = p[SIGMA_NU_SLOPE], p[SIGMA_NU_INTERCEPT], p[SIGMA_NU_MIN], p[SIGMA_NU_MAX]
    dscale, floor = p[DRIFT_SCALE], p[FLOOR]
    zero, one = np.float32(0.0), np.float32(1.0)
    shared = g_target.shape[0] == 1
    for r in range(g_prog.shape[0]):  # row slices: unit-stride loops that vectorise
        rt = 0 if shared else r
        gt_r, lg_r = g_target[rt, a : a + w], log_g[rt]
        gp_r, nu_r, gn_r = g_prog[r, a : a + w], nu[r, a : a + w], g_norm[r, a : a + w]
        lu_p, lu_n, ct_p, ct_n = logs[0, r], logs[1, r], cosines[0, r], cosines[1, r]
        for j in range(w):
            gt = gt_r[j]
            g = min(max(gt / g_max, zero), one)
            sigma = ((c0 + c1 * g) + (c2 * g) * g) * pscale
            z_prog = np.sqrt(lu_p[j] * minus_two) * ct_p[j]
            z_nu = np.sqrt(lu_n[j] * minus_two) * ct_n[j]
            gp = max(gt + sigma * z_prog, zero)
            lg = lg_r[j]
            sd = min(max(sds * lg + sdi, sdmin), sdmax)
            mu = min(max(mus * lg + mui, mumin), mumax)
            nu_r[j] = abs(mu + sd * z_nu) * dscale
            gp_r[j] = gp
            gn_r[j] = max(min(max(gp / g_max, zero), one), floor)
