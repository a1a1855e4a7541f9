"""The compiled integer part of mcstudy's counter-based generator (``rng.py``).

Element ``i`` of the stream with key ``k`` starts from ``b = mix64(k + (i + 1)·φ)`` —
SplitMix64 (Steele, Lea & Flood, OOPSLA 2014), ``φ = 0x9E3779B97F4A7C15`` — and two
23-bit fields of ``b`` become a uniform ``u`` and an angle ``θ``; a normal is
``√(−2 ln u)·cos θ`` (Box-Muller). In eager PyTorch the integer hash is a dozen
memory-bound int64 passes; here it is one vectorised loop. ``rng.fields`` runs the same
arithmetic as tensor operations on other devices (CUDA); ``tests/test_rng.py`` checks
that both give the same bits.
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
def box_muller_finish(log_u: np.ndarray, cos_theta: np.ndarray, c: np.float32, out: np.ndarray) -> None:
    """``out = √(c·ln u)·cos θ`` (float32, ``c = −2·scale²``), given ``ln u`` and ``cos θ``."""
    for j in range(out.shape[0]):
        out[j] = np.sqrt(log_u[j] * c) * cos_theta[j]


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
