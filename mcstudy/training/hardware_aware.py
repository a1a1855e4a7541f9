"""Hardware-aware training (Obradovic et al., arXiv 1809.04982).

The deterministic hardware transfer function — 2**bits conductance levels, the nonlinear
level-to-conductance curve, the on/off ratio and the +/- asymmetry of
``mcstudy.hardware.mapping`` — is in the forward pass. Its staircase is replaced by a
smooth surrogate, ``floor(y) + sigmoid((frac(y) − ½)/τ)``, whose sharpness τ is
annealed from ``tau_start`` to 0 over the first ``anneal`` fraction of training; the
rest of training (and the deployed model) uses the exact function, with straight-through
gradients. Activations are quantised like the periphery's DAC.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ..hardware.base import MAPPINGS
from ..hardware.mapping import Encoding, Mapping, Quantiser
from .base import TRAINERS
from .quantized import QATParams, _Quantising, ste, weight_ranges


def soft_levels(bits: int | None, tau: float) -> Quantiser:
    """A smooth staircase onto ``2**bits`` levels of [0, 1]; exact rounding (with straight-
    through gradients) when ``tau`` is 0."""

    def q(v: torch.Tensor) -> torch.Tensor:
        if bits is None:
            return v
        steps = 2**bits - 1
        y = v * steps
        if tau <= 0:
            return ste(v, torch.round(y) / steps)
        base = torch.floor(y).detach()
        return (base + torch.sigmoid((y - base - 0.5) / tau)) / steps

    return q


class HWAParams(QATParams, Encoding):
    mapping: Literal["differential", "multi_pair", "unipolar"] = "differential"
    tau_start: float = Field(0.3, gt=0, description="initial surrogate width τ (in level steps)")
    anneal: float = Field(0.7, gt=0, le=1, description="fraction of training over which τ decays to 0")


@TRAINERS.register("hardware_aware", HWAParams)
class HardwareAware(_Quantising):
    """The exact device transfer function in the forward pass, through an annealed smooth surrogate."""

    params: HWAParams

    def mapping(self) -> Mapping:
        entry = MAPPINGS.get(self.params.mapping)
        fields = set(entry.params.model_fields)
        return entry.obj(entry.params(**{k: v for k, v in self.params.model_dump().items() if k in fields}))

    def tau(self, progress: float) -> float:
        p = self.params
        if progress >= p.anneal:
            return 0.0
        return p.tau_start * 0.5 * (1 + math.cos(math.pi * progress / p.anneal))  # cosine decay

    def transferred(self, ws: dict[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
        mapping = self.mapping()
        ranges = weight_ranges(ws, self.params.ranges)
        quantiser = soft_levels(self.params.bits, tau)
        return {n: mapping.transfer(w.reshape(w.shape[0], -1), ranges[n].expand(w.shape[0], w[0].numel()), quantiser).reshape(w.shape) for n, w in ws.items()}

    def weights(self, ws: dict[str, torch.Tensor], gen: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        return self.transferred(ws, self.tau(progress))

    @torch.no_grad()
    def finish(self, model: nn.Module, names: list[str]) -> None:
        """Keep the trained weights: deployed through the same mapping they become exactly
        the transfer function the network was trained with at τ = 0."""
