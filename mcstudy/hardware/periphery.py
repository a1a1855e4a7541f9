"""The circuit around the crossbars: DACs, ADCs, output noise, and the analog neurons'
operating-point drift and mismatch (Jia et al., DAC 2018).

Units. Inputs are normalised by ``x_scale`` — the DAC's fixed range, or, with per-vector
scaling, each input's largest |x|: a Linear's input vector or token (as aihwkit's "noise
management" scales each vector), a convolution's whole input image, one range for all its
patches (aihwkit scales each unfolded patch; a trainer's activation quantisation, which
the chips reproduce, each image) — and
weights by the full-scale weight ``w_max`` of their tile, so a crossbar column's
normalised output is in units of one full-scale device driven by a full-scale input.
The ADC range, output noise and neuron offsets are in those units.

- DAC: ``bits`` over [−range, range] (or the vector's own range), rounding to the nearest level.
- ADC: clip to [−range, range] and round to ``bits``; each row of tiles is digitised
  separately and the partial sums are added digitally.
- Output noise: Gaussian, fresh for every input vector, before the ADC.
- Operating-point drift (Jia et al., DAC 2018): a shared shift of the neurons' bias
  point, ``y = (1 + δ_gain)·y + δ_offset``, one draw per chip, per layer or per neuron.
- Mismatch (Jia et al.; Pelgrom: σ ∝ 1/√area): per-multiplier gain error
  ``w·(1 + ε)`` and per-neuron offset, drawn once per device or neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from ..registry import Params
from ..rng import Stream


class DACSpec(Params):
    bits: PositiveInt | None = Field(None, le=24, description="input DAC bits (None: exact inputs)")
    range: float = Field(1.0, gt=0, description="input full scale (mode 'fixed')")
    mode: Literal["per_vector", "fixed"] = Field(
        "per_vector", description="scale by each input's |x|max (a Linear's input vector or token; a convolution's whole image, shared by its patches), or a fixed range"
    )
    signed: bool = Field(True, description="symmetric levels over ±range; false: 2**bits levels over [0, range] for non-negative inputs (after ReLU)")


class ADCSpec(Params):
    bits: PositiveInt | None = Field(None, le=24, description="output ADC bits (None: exact outputs)")
    range: float = Field(10.0, gt=0, description="ADC full scale, in full-scale device × full-scale input units")


class OpDriftSpec(Params):
    gain: float = Field(0.0, ge=0, description="σ of the relative gain shift δ_gain")
    offset: float = Field(0.0, ge=0, description="σ of the offset δ_offset, in full-scale weight × unit input units")
    granularity: Literal["chip", "layer", "neuron"] = Field("chip", description="what shares one drift draw: the chip, each layer or each neuron")


class MismatchSpec(Params):
    gain: float = Field(0.0, ge=0, description="σ of each multiplier's relative gain error")
    offset: float = Field(0.0, ge=0, description="σ of each neuron's offset, in full-scale weight × unit input units")


class PeripherySpec(Params):
    dac: DACSpec = Field(DACSpec(), description="the input converter of every crossbar layer")
    adc: ADCSpec = Field(ADCSpec(), description="the output converter of every crossbar column")
    output_noise: float = Field(0.0, ge=0, description="σ of additive output noise per input vector (normalised units)")
    op_drift: OpDriftSpec = Field(OpDriftSpec(), description="operating-point drift of the neurons (Jia et al.)")
    mismatch: MismatchSpec = Field(MismatchSpec(), description="each analog multiplier's and neuron's own error (Jia et al.)")

    @property
    def needs_vector_noise(self) -> bool:
        return self.output_noise > 0


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round``; when ``x`` needs a gradient (on-chip learning back-propagates through
    the converters) the gradient passes straight through. Without gradients it is exactly
    ``torch.round``, so evaluation is unchanged."""
    r = torch.round(x)
    return x + (r - x).detach() if x.requires_grad else r


def _compiled(x: torch.Tensor) -> bool:
    """Whether a converter on ``x`` may run as one compiled pass (``kernels.converters``): evaluation
    on the CPU in float32, where nothing needs a gradient."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32


def _row_steps(x: torch.Tensor, step: torch.Tensor | float) -> torch.Tensor | None:
    """``step`` as one value per row of ``x`` flattened to ``(R, F)`` (a float: one row), or
    None when it does not broadcast that way."""
    if not isinstance(step, torch.Tensor):
        return torch.tensor([step], dtype=torch.float32)
    k = step.dim()
    while k > 0 and step.shape[k - 1] == 1:
        k -= 1
    if step.dim() != x.dim() or tuple(step.shape[:k]) != tuple(x.shape[:k]) or step.dtype != torch.float32:
        return None
    return step.reshape(-1).contiguous()


def _quantise(x: torch.Tensor, step: torch.Tensor | float, lo: int, hi: int) -> torch.Tensor:
    """``round(clip(x/step, lo, hi))·step``; in evaluation one compiled pass with the same bits."""
    rows = _row_steps(x, step) if _compiled(x) else None
    if rows is None:
        return round_ste((x / step).clamp(lo, hi)) * step
    from .. import kernels

    xc = x.contiguous()
    out = torch.empty_like(xc)
    r = rows.numel()
    kernels.quantise_rows(xc.view(r, -1).numpy(), rows.numpy(), np.float32(lo), np.float32(hi), out.view(r, -1).numpy())
    return out


def quantise_symmetric(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Clip to ±full_scale and round to the nearest of ``2**bits − 1`` symmetric levels."""
    half = 2 ** (bits - 1) - 1
    return _quantise(x, full_scale / half, -half, half)


def quantise_input(x: torch.Tensor, full_scale: torch.Tensor | float, dac: DACSpec) -> torch.Tensor:
    """The DAC: symmetric levels, or (``signed: false``) ``2**bits`` levels over [0, full scale]."""
    assert dac.bits is not None
    if dac.signed:
        return quantise_symmetric(x, full_scale, dac.bits)
    steps = 2**dac.bits - 1
    return _quantise(x, full_scale / steps, 0, steps)


def adc_tile(y: torch.Tensor, x_scale: torch.Tensor | float, w_max: torch.Tensor, adc: ADCSpec) -> torch.Tensor | None:
    """The ADC on one tile's outputs ``y`` ``(C, N, out, *spatial)`` in evaluation, as one
    compiled pass: in normalised units ``x_scale·w_max`` (a full-scale device driven by a
    full-scale input), :func:`quantise_symmetric` to the ADC range, back to weight × input
    units — the same bits as ``layers.crossbar``'s tensor code; None where that code must run."""
    if adc.bits is None or not _compiled(y) or w_max.dtype != torch.float32:
        return None
    from .. import kernels

    c, n, n_out = y.shape[:3]
    rows = c * n
    if isinstance(x_scale, torch.Tensor):
        if x_scale.numel() != rows or x_scale.dtype != torch.float32:
            return None
        xs = x_scale.reshape(rows).contiguous()
    else:
        xs = torch.full((rows,), x_scale, dtype=torch.float32)
    half = 2 ** (adc.bits - 1) - 1
    yc = y.contiguous()
    out = torch.empty_like(yc)
    wm = w_max.reshape(n_out).contiguous()
    kernels.adc_rows(yc.view(rows, n_out, -1).numpy(), xs.numpy(), wm.numpy(), np.float32(adc.range / half),
                     np.float32(-half), np.float32(half), out.view(rows, n_out, -1).numpy())  # fmt: skip
    return out


def input_scale(x: torch.Tensor, dac: DACSpec, reduce_dims: tuple[int, ...]) -> torch.Tensor | float:
    """``x_scale``: the DAC range, or each vector's largest |x| (never zero)."""
    if dac.mode == "fixed":
        return dac.range
    tiny = torch.finfo(x.dtype).tiny
    lead = x.dim() - len(reduce_dims)
    if _compiled(x) and reduce_dims == tuple(range(lead, x.dim())):  # one compiled pass, no |x| tensor
        from .. import kernels

        rows = x.shape[:lead]
        out = torch.empty(rows, dtype=x.dtype)
        kernels.abs_max_rows(x.contiguous().view(out.numel(), -1).numpy(), out.view(-1).numpy())
        return out.view(*rows, *([1] * len(reduce_dims))).clamp_(min=tiny)
    return x.abs().amax(dim=reduce_dims, keepdim=True).clamp(min=tiny)


@dataclass(frozen=True)
class NeuronDraws:
    """Per-chip neuron gain ``(C, 1|out)`` (1 + δ) and offset ``(C, 1|out)`` in weight × input units."""

    gain: torch.Tensor | None
    offset: torch.Tensor | None


def _shared(stream: Stream, granularity: str, layer: int, n_out: int, tag: str) -> torch.Tensor:
    if granularity == "chip":
        return stream.child(tag).normal(1)
    if granularity == "layer":
        return stream.child(tag, layer).normal(1)
    return stream.child(tag, layer).normal(n_out)


def neuron_draws(spec: PeripherySpec, stream: Stream, layer: int, n_out: int, w_scale: float) -> NeuronDraws:
    """Operating-point drift and mismatch offsets of one layer's neurons, for every chip of ``stream``."""
    op, mm = spec.op_drift, spec.mismatch
    gain = offset = None
    if op.gain > 0:
        gain = 1.0 + op.gain * _shared(stream, op.granularity, layer, n_out, "op_gain")
    if op.offset > 0:
        offset = op.offset * w_scale * _shared(stream, op.granularity, layer, n_out, "op_offset")
    if mm.offset > 0:
        extra = mm.offset * w_scale * stream.child("mismatch_offset", layer).normal(n_out)
        offset = extra if offset is None else offset + extra
    return NeuronDraws(gain, offset)


def mismatch_gain(spec: PeripherySpec, stream: Stream, layer: int, shape: tuple[int, int]) -> torch.Tensor | None:
    """Per-multiplier gain ``(C, out, in)`` (1 + ε), or None."""
    if spec.mismatch.gain == 0:
        return None
    return 1.0 + spec.mismatch.gain * stream.child("mismatch_gain", layer).normal(*shape)


def chip_draws(spec: PeripherySpec, stream: Stream) -> dict[str, torch.Tensor]:
    """Per-chip draws worth keeping (chip-granularity operating-point drift)."""
    out: dict[str, torch.Tensor] = {}
    if spec.op_drift.granularity == "chip":
        for name, sigma in (("op_gain", spec.op_drift.gain), ("op_offset", spec.op_drift.offset)):
            if sigma > 0:
                out[f"{name}_z"] = stream.child(name).normal(1)[:, 0]
    return out
