"""Noise-injection training: the common baseline (IBM's hardware-aware training).

Every minibatch the crossbar weights used in the forward pass are perturbed with fresh
Gaussian noise — additive, ``w + σ·max|W|·z`` (noise relative to the layer's largest
weight, like conductance noise relative to G_max), or multiplicative, ``w·(1 + σ·z)``.
The gradient computed at the noisy weights updates the clean weights. Optionally the
weights are clipped to ``±clip·std(W)`` of their layer after every step, which keeps
the mapping's scale from being set by a few outliers (Joshi et al., Nat. Commun. 2020).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from .base import TRAINERS, Trainer, TrainParams


class NoiseInjectionParams(TrainParams):
    sigma: float = Field(0.05, ge=0, description="noise standard deviation (relative)")
    mode: Literal["additive", "multiplicative"] = "additive"
    clip: float | None = Field(None, gt=0, description="clip weights to ±clip·std of their layer after each step")


@TRAINERS.register("noise_injection", NoiseInjectionParams)
class NoiseInjection(Trainer):
    """Gaussian weight noise in every forward pass, optional weight clipping."""

    params: NoiseInjectionParams

    def perturb(self, name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(w.shape, generator=gen)
        if self.params.mode == "additive":
            noise = self.params.sigma * w.detach().abs().max() * z
        else:
            noise = self.params.sigma * w.detach() * z
        return w + noise

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        if self.params.clip is None:
            return
        params = dict(model.named_parameters())
        for n in names:
            w = params[n]
            bound = self.params.clip * w.std()
            w.clamp_(-bound, bound)
