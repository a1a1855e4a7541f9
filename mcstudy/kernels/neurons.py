"""Compiled passes of the analog layers' digital stage (``analog/layers.py``): the
neurons' gain, offset and bias with an optional ReLU in place, and max-pooling over
planes, in the tensor code's float32 order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
