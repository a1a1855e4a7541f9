"""Quantisation-aware training, its variability-aware extension, and post-training
quantisation (the baseline every paper compares with).

Weights are quantised on the grid an n-bit differential pair realises: a layer's weights
take the values ``(k/(2**bits − 1))·w_max``, ``|k| ≤ 2**bits − 1``, with ``w_max`` the
layer's largest |w| (``ranges: per_layer``) or the largest over all layers (``shared``).
They are computed by the differential mapping's own transfer function
(``Mapping.transfer``, in units of G_max), so ideal n-bit devices deployed with the
trainer's ranges (a population's ``weight_scale: trained``, the default where a trainer
has ranges) reproduce them bit for bit. Inputs of every crossbar layer are quantised like
the periphery's DAC (``mcstudy.hardware.periphery``). Gradients pass the rounding
straight through (STE; Bengio et al. 2013).

Variability-aware training (Deng & Orshansky, DATE 2022) samples fresh within-chip and
between-chip variation on the quantised weights at every forward pass, with the same
lognormal model and granularities as the hardware populations:
``w·exp(σ_w·z_w + σ_b·z_b)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..hardware.base import MAPPINGS
from ..hardware.periphery import DACSpec, input_scale, quantise_input
from ..hardware.variation import Variation
from .base import TRAINERS, Trainer, TrainParams, analog_weight_names


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (q - x).detach()


def weight_ranges(ws: dict[str, torch.Tensor], ranges: str) -> dict[str, torch.Tensor]:
    """Each layer's full-scale weight (detached): its own largest |w|, or the largest of all."""
    own = {n: w.detach().abs().max().clamp(min=torch.finfo(w.dtype).tiny) for n, w in ws.items()}
    if ranges == "shared":
        top = torch.stack(list(own.values())).max()
        return {n: top for n in ws}
    return own


def quantise_weight(w: torch.Tensor, w_max: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` on the n-bit differential grid ``(k/(2**bits − 1))·w_max`` (clipping at ±w_max),
    with straight-through gradients inside the range: exactly the weights an ideal n-bit
    differential pair decodes (``Mapping.transfer``)."""
    entry = MAPPINGS.get("differential")
    mapping = entry.obj(entry.params(bits=bits))
    steps = 2**bits - 1
    shape = w.shape
    flat = w.reshape(shape[0], -1)
    full = w_max.expand(flat.shape) if w_max.dim() == 0 else w_max.reshape(flat.shape)
    return mapping.transfer(flat, full, lambda v: ste(v, torch.round(v * steps) / steps)).reshape(shape)


def quantise_activation(x: torch.Tensor, dac: DACSpec) -> torch.Tensor:
    """Exactly the periphery's DAC: ``dac.bits`` over each vector's range or a fixed range."""
    return quantise_input(x, input_scale(x, dac, tuple(range(1, x.dim()))), dac)


def fake_quant_activation(x: torch.Tensor, dac: DACSpec) -> torch.Tensor:
    """The DAC in the forward pass; in the backward pass the gradient flows inside the
    DAC's range and is zero where the input is clipped (a straight-through estimator
    that does not pretend clipped inputs still matter)."""
    scale = input_scale(x.detach(), dac, tuple(range(1, x.dim())))
    top = torch.as_tensor(scale, dtype=x.dtype)
    clipped = torch.minimum(x, top)
    clipped = torch.maximum(clipped, -top) if dac.signed else clipped.clamp(min=0)
    return ste(clipped, quantise_input(clipped.detach(), scale, dac))


class QATParams(TrainParams):
    bits: PositiveInt = Field(4, le=16, description="device bits: weights on the n-bit differential grid")
    activation_bits: PositiveInt | None = Field(None, le=16, description="bits of every crossbar layer's inputs (None: float)")
    activation_mode: Literal["per_vector", "fixed"] = Field("per_vector", description="inputs quantised over each input vector's own range, or over activation_range (as the DAC)")
    activation_range: float = Field(1.0, gt=0, description="input full scale (activation_mode 'fixed')")
    activation_signed: bool = Field(True, description="as the DAC's 'signed': false for non-negative inputs")
    ranges: Literal["per_layer", "shared"] = Field("per_layer", description="one weight range per layer, or one for all")


class _Quantising(Trainer):
    params: QATParams

    def _dac(self) -> DACSpec:
        p = self.params
        return DACSpec(bits=p.activation_bits, range=p.activation_range, mode=p.activation_mode, signed=p.activation_signed)

    def quantised(self, ws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ranges = weight_ranges(ws, self.params.ranges)
        return {n: quantise_weight(w, ranges[n], self.params.bits) for n, w in ws.items()}

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.params.activation_bits
        return x if bits is None else fake_quant_activation(x, self._dac())

    def uses_activation(self) -> bool:
        return self.params.activation_bits is not None

    def reference_dac(self) -> DACSpec:
        """The DAC of the forward pass where activations are quantised."""
        return self._dac() if self.uses_activation() else DACSpec()

    def ranges(self, model: nn.Module) -> dict[str, float] | None:
        """Each analog layer's full-scale weight as the forward pass used it: the layer's
        (or, with ``ranges: shared``, every layer's) largest |w|."""
        params = dict(model.named_parameters())
        names = analog_weight_names(model)
        return {n: float(r) for n, r in weight_ranges({n: params[n] for n in names}, self.params.ranges).items()}

    @torch.no_grad()
    def finish(self, model: nn.Module, names: list[str]) -> None:
        """Store the weights on their grid, so deployment maps exactly what was trained."""
        params = dict(model.named_parameters())
        q = self.quantised({n: params[n] for n in names})
        for n in names:
            params[n].copy_(q[n])


@TRAINERS.register("quantization_aware", QATParams)
class QuantizationAware(_Quantising):
    """n-bit weights and activations in the forward pass, straight-through gradients."""

    def weights(self, ws: dict[str, torch.Tensor], gen: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        return self.quantised(ws)


@TRAINERS.register("post_training_quantized", QATParams)
class PostTrainingQuantized(_Quantising):
    """Float training; the weights are quantised once, after training."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def uses_activation(self) -> bool:
        return False


class VATParams(QATParams):
    variation: Variation = Field(
        Variation.model_validate({"within": {"sigma": 0.1}, "between": {"sigma": 0.1}}),
        description="variation sampled at every forward pass (lognormal; device/column/layer/chip granularity)",
    )


@TRAINERS.register("variability_aware", VATParams)
class VariabilityAware(_Quantising):
    """Quantisation-aware training with fresh within- and between-chip variation every pass."""

    params: VATParams

    def weights(self, ws: dict[str, torch.Tensor], gen: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        return sample_variation(self.quantised(ws), self.params.variation, gen)


def sample_variation(ws: dict[str, torch.Tensor], variation: Variation, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every weight tensor times a fresh draw of lognormal within- and between-chip variation
    (Deng & Orshansky): ``w·exp(σ_w·z_w + σ_b·z_b)``, each ``z`` shared at its component's
    granularity (one draw for the whole network at ``chip``, per tensor at ``layer``, per
    output at ``column``/``tile``, per weight at ``device``)."""
    shared: dict[str, torch.Tensor] = {}
    out = {}
    for n, w in ws.items():
        log_gain = torch.zeros((), dtype=w.dtype)
        for key, comp in (("within", variation.within), ("between", variation.between)):
            if comp.sigma == 0:
                continue
            if comp.kind != "lognormal":
                raise ValueError("training samples lognormal variation")
            g = comp.granularity
            if g == "chip":
                if key not in shared:
                    shared[key] = torch.randn((), generator=gen)
                z = shared[key]
            elif g == "layer":
                z = torch.randn((), generator=gen)
            elif g in ("column", "tile"):
                z = torch.randn((w.shape[0],) + (1,) * (w.dim() - 1), generator=gen)
            else:
                z = torch.randn(w.shape, generator=gen)
            log_gain = log_gain + comp.sigma * z
        out[n] = w * torch.exp(log_gain)
    return out
