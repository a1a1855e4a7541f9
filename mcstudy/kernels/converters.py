"""Compiled passes of the converters (``hardware/periphery.py``): per-row largest |x|,
the DAC's rounding onto a grid and the ADC's clipping and rounding, in the tensor
code's float32 order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
