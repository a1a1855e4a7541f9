"""Compiled CPU kernel of the counter-based generator's integer part.

Every random number mcstudy draws is a pure function of a 64-bit stream key and an
element index (``rng.py``): element ``i`` of the stream with key ``k`` starts from
``b = mix64(k + (i + 1)·φ)`` — SplitMix64 (Steele, Lea & Flood, OOPSLA 2014),
``φ = 0x9E3779B97F4A7C15`` — and two 23-bit fields of ``b`` become two uniforms.

In eager PyTorch that integer hash is a dozen memory-bound int64 passes (with logical
shifts emulated by masks) and was the largest cost of a study: 23 ns per normal. Numba
compiles it to one vectorised loop (about 0.5 ns per element on a 2-core CI VM). The
transcendental functions (ln, cos, exp) stay in PyTorch's vectorised float32 kernels,
and the arithmetic between them — the rest of a normal, a PCM read, PCM programming —
runs here in one pass each instead of one tensor pass per operation. Every kernel does
the tensor formula's float32 operations in the same order (no fast-math, no fused
multiply-add), so it gives the same bits as the tensor code in ``rng.py`` and
``hardware/pcm.py``, which is what runs on other devices (CUDA).
``rng.fields`` runs the same arithmetic as tensor operations on other devices (CUDA);
``tests/test_rng.py`` checks both give the same bits.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

_PHI = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S41, _S9, _M23 = np.uint64(41), np.uint64(9), np.uint64(0x7FFFFF)
_HALF = np.float32(0.5)
_FIELD = np.float32(2.0**-23)
_TWO_PI = np.float32(2.0 * np.pi)


@njit(inline="always", cache=True)
def _mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(inline="always", cache=True)
def _fields_row(key: np.uint64, first: int, span: int, u: np.ndarray, theta: np.ndarray) -> None:
    """Elements ``first .. first+span-1`` of the stream with key ``key`` into ``u[:span]``, ``theta[:span]``."""
    x = key + np.uint64(first) * _PHI
    for j in range(span):
        x += _PHI  # the counter of element first + j + 1, as an induction variable (no multiply)
        b = _mix64(x)
        u[j] = (np.float32(b >> _S41) + _HALF) * _FIELD
        theta[j] = (np.float32((b >> _S9) & _M23) + _HALF) * _FIELD * _TWO_PI


@njit(nogil=True, cache=True)
def _fields_kernel(keys: np.ndarray, starts: np.ndarray, span: int, u: np.ndarray, theta: np.ndarray) -> None:
    """Elements ``starts[d] .. starts[d]+span-1`` of every key's stream into ``u[d, c, :span]``
    and ``theta[d, c, :span]`` (``(windows, chips, ≥ span)`` float32 workspaces)."""
    for d in range(starts.shape[0]):
        for c in range(keys.shape[0]):
            _fields_row(keys[c], starts[d], span, u[d, c], theta[d, c])


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


@njit(nogil=True, cache=True, error_model="numpy")
def box_muller_finish(log_u: np.ndarray, cos_theta: np.ndarray, c: np.float32, out: np.ndarray) -> None:
    """``out = √(c·ln u)·cos θ`` (float32, ``c = −2·scale²``), given ``ln u`` and ``cos θ``."""
    for j in range(out.shape[0]):
        out[j] = np.sqrt(log_u[j] * c) * cos_theta[j]


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
    normalised ``G_P`` (for Q_s) into the same columns of ``g_norm`` ``(chips, n)``. ``p`` (float32): g_max,
    c0, c1, c2, σ_prog scale (prog_noise_scale·g_max/prog_g_ref), μ slope, intercept, min, max, σ slope, intercept, min,
    max, drift_scale, floor. The normals as :func:`box_muller_finish`, then the tensor
    formula's operations in its order, so the same float32 results."""
    minus_two = np.float32(-2.0)
    g_max, c0, c1, c2, pscale = p[0], p[1], p[2], p[3], p[4]
    mus, mui, mumin, mumax = p[5], p[6], p[7], p[8]
    sds, sdi, sdmin, sdmax = p[9], p[10], p[11], p[12]
    dscale, floor = p[13], p[14]
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


@njit(nogil=True, cache=True, error_model="numpy")
def abs_max_rows(x: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = max_f |x[r, f]|`` (exact, whatever the order)."""
    for r in range(x.shape[0]):
        m = np.float32(0.0)
        for f in range(x.shape[1]):
            m = max(m, abs(x[r, f]))
        out[r] = m


@njit(nogil=True, cache=True, error_model="numpy")
def quantise_rows(x: np.ndarray, step: np.ndarray, lo: np.float32, hi: np.float32, out: np.ndarray) -> None:
    """A converter on ``(R, F)`` values with one step per row: ``round(clip(x/step, lo, hi))·step``
    (round half to even, as ``torch.round``) — ``periphery.quantise_*``'s operations in order."""
    for r in range(x.shape[0]):
        s = step[r]
        for f in range(x.shape[1]):
            out[r, f] = np.rint(min(max(x[r, f] / s, lo), hi)) * s


@njit(nogil=True, cache=True, error_model="numpy")
def adc_rows(
    y: np.ndarray, x_scale: np.ndarray, w_max: np.ndarray, step: np.float32, lo: np.float32, hi: np.float32, out: np.ndarray
) -> None:
    """The ADC of ``layers.crossbar`` on ``(R, out, S)`` tile outputs: in normalised units
    ``n = x_scale[r]·w_max[o]``, ``round(clip((y/n)/step, lo, hi))·step·n`` — the tensor
    code's operations in its order."""
    n_out, spatial = y.shape[1], y.shape[2]
    for r in range(y.shape[0]):
        if spatial == 1:  # a linear layer: vectorise over the outputs
            for o in range(n_out):
                norm = x_scale[r] * w_max[o]
                out[r, o, 0] = np.rint(min(max((y[r, o, 0] / norm) / step, lo), hi)) * step * norm
            continue
        for o in range(n_out):  # a convolution: vectorise over positions
            norm = x_scale[r] * w_max[o]
            for k in range(spatial):
                out[r, o, k] = np.rint(min(max((y[r, o, k] / norm) / step, lo), hi)) * step * norm


@njit(nogil=True, cache=True, error_model="numpy")
def neuron_epilogue(y: np.ndarray, per_neuron: np.ndarray, ops: np.ndarray, relu: bool) -> None:
    """An analog layer's digital output stage in place on ``y`` ``(C, N, out, S)``: for each
    ``k`` in order, ``per_neuron[k]`` ``(C, out)`` multiplied (``ops[k]`` = 1) or added
    (2) — neuron gain, offset, output scale, shift, bias (``layers.ChipLayer.forward``) —
    then ReLU (``torch.relu``: −0 and NaN pass through) where ``relu``. One float32
    operation per step, in that order: the tensor code's bits."""
    zero = np.float32(0.0)
    n_ops, spatial = ops.shape[0], y.shape[3]
    for c in range(y.shape[0]):
        for n in range(y.shape[1]):
            if spatial == 1:  # a linear layer: vectorise over the outputs
                row = y[c, n].reshape(y.shape[2])  # a unit-stride view (y[c, n, :, 0] would not vectorise)
                for k in range(n_ops):
                    v = per_neuron[k, c]
                    if ops[k] == 1:
                        for o in range(row.shape[0]):
                            row[o] = row[o] * v[o]
                    else:
                        for o in range(row.shape[0]):
                            row[o] = row[o] + v[o]
                if relu:
                    for o in range(row.shape[0]):
                        if row[o] < zero:
                            row[o] = zero
                continue
            for o in range(y.shape[2]):  # a convolution: vectorise over positions
                plane = y[c, n, o]
                for k in range(n_ops):
                    v = per_neuron[k, c, o]
                    if ops[k] == 1:
                        for j in range(spatial):
                            plane[j] = plane[j] * v
                    else:
                        for j in range(spatial):
                            plane[j] = plane[j] + v
                if relu:
                    for j in range(spatial):
                        if plane[j] < zero:
                            plane[j] = zero


@njit(nogil=True, cache=True, error_model="numpy")
def max_pool_planes(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, out: np.ndarray) -> None:
    """2-D max pooling of planes ``x`` ``(P, H, W)`` into ``out`` ``(P, Ho, Wo)`` with PyTorch's
    CPU semantics (``MaxPoolKernel.cpp``): each window's positions inside the plane scanned
    row by row from −∞, a value taken where it is larger or NaN — so ties keep the first
    value (the sign of a zero included) and NaN propagates: the same bits. Here a whole
    output row is updated per window position (unit-stride passes) rather than one
    window at a time."""
    height, width, n_oh, n_ow = x.shape[1], x.shape[2], out.shape[1], out.shape[2]
    minus_inf = np.float32(-np.inf)
    lo, hi, first = np.empty(kw, np.int64), np.empty(kw, np.int64), np.empty(kw, np.int64)
    for j in range(kw):  # window column j of output ow is input column ow·sw + off: the outputs where it is inside
        off = j * dw - pw
        lo[j] = max(0, (-off + sw - 1) // sw)
        hi[j] = max(lo[j], min(n_ow, (width - 1 - off) // sw + 1))
        first[j] = lo[j] * sw + off
    for p in range(x.shape[0]):
        plane, o_plane = x[p], out[p]
        for oh in range(n_oh):
            o_row = o_plane[oh]
            for ow in range(n_ow):
                o_row[ow] = minus_inf
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= height:
                    continue
                row = plane[ih]
                for j in range(kw):
                    f, l0 = first[j], lo[j]
                    for k in range(hi[j] - l0):
                        v, m = row[f + k * sw], o_row[l0 + k]
                        o_row[l0 + k] = v if (v > m or np.isnan(v)) else m


def uniform_fields(
    keys: torch.Tensor, first: int, count: int, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rng.fields`` on the CPU: float32 ``(C, count)`` uniforms ``u`` and angles ``θ`` of
    elements ``first..first+count-1`` of each key's stream (same bits as the tensor form),
    written to ``out`` (two contiguous float32 tensors) when given."""
    c = keys.shape[0]
    u, theta = out if out is not None else (torch.empty(c, count), torch.empty(c, count))
    if count:
        window_fields(keys, np.array([first], dtype=np.int64), count, u.view(1, c, count), theta.view(1, c, count))
    return u, theta


def window_fields(keys: torch.Tensor, starts: np.ndarray, span: int, u: torch.Tensor, theta: torch.Tensor) -> None:
    """``rng.fields`` of several windows at once on the CPU: elements ``starts[d] ..
    starts[d]+span-1`` of every key's stream into ``u[d, chip, :span]`` and
    ``theta[d, chip, :span]`` (contiguous float32 ``(windows, chips, ≥ span)``)."""
    _fields_kernel(keys.detach().numpy().view(np.uint64), starts, span, u.numpy(), theta.numpy())


__all__ = [
    "abs_max_rows", "adc_rows", "max_pool_planes", "neuron_epilogue", "quantise_rows", "box_muller_finish", "pcm_floor_normalised", "pcm_program_finish", "pcm_read_decode_finish", "pcm_read_finish", "pcm_read_windows", "uniform_fields", "window_fields",
]
