"""Noise-injection training: the common baseline (IBM's hardware-aware training).

Every minibatch the crossbar weights used in the forward pass are perturbed with fresh
Gaussian noise — additive, ``w + σ·max|W|·z`` (noise relative to the layer's largest
weight, like conductance noise relative to G_max), or multiplicative, ``w·(1 + σ·z)``.
With ``variation``, a fresh draw of lognormal within- and between-chip variation
multiplies them as well (the terms variability-aware training samples, without its
quantisation: the baseline with the same noise). The gradient computed at the noisy
weights updates the clean weights. Optionally the
weights are clipped to ``±clip·std(W)`` of their layer after every step, which keeps
the mapping's scale from being set by a few outliers (Joshi et al., Nat. Commun. 2020).

It trains float weights and records no weight range, so ``weight_scale: auto`` deploys
its networks with each tile's own scale; its additive noise is relative to the layer's
largest weight, which is the deployed scale under ``weight_scale: layer``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ..hardware.variation import Variation
from .base import TRAINERS, Trainer, TrainParams
from .quantized import sample_variation


class NoiseInjectionParams(TrainParams):
    sigma: float = Field(0.05, ge=0, description="noise standard deviation (relative)")
    mode: Literal["additive", "multiplicative"] = Field("additive", description="w + σ·max|W|·z, or w·(1 + σ·z)")
    clip: float | None = Field(None, gt=0, description="clip weights to ±clip·std of their layer after each step")
    variation: Variation = Field(
        Variation(), description="lognormal within- and between-chip variation sampled on top at every pass, as variability-aware training does (none by default)"
    )


@TRAINERS.register("noise_injection", NoiseInjectionParams)
class NoiseInjection(Trainer):
    """Gaussian weight noise in every forward pass, optional weight clipping."""

    params: NoiseInjectionParams

    def weights(self, ws: dict[str, torch.Tensor], gen: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in ws.items():
            z = torch.randn(w.shape, generator=gen)
            scale = w.detach().abs().max() if self.params.mode == "additive" else w.detach()
            out[name] = w + self.params.sigma * scale * z
        return sample_variation(out, self.params.variation, gen)

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        if self.params.clip is None:
            return
        params = dict(model.named_parameters())
        for n in names:
            w = params[n]
            bound = self.params.clip * w.std()
            w.clamp_(-bound, bound)
