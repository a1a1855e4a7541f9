"""Weight <-> conductance mappings (SCIENCE.md §3)."""

from __future__ import annotations

import torch

from ..registry import NoParams
from .base import MAPPINGS, Mapping


@MAPPINGS.register("differential", NoParams)
class DifferentialPair(Mapping):
    """Differential pair: w = (G⁺ − G⁻) / s, one of the two devices at zero.

    The scale s (µS per unit weight) maps the layer's largest |w| to G_max, so the
    full conductance range is used.
    """

    devices_per_weight = 2

    def targets(self, w: torch.Tensor, g_max: float) -> tuple[torch.Tensor, float]:
        w_abs_max = float(w.abs().max())
        scale = g_max / w_abs_max if w_abs_max > 0 else 1.0
        return torch.stack((w.clamp(min=0), (-w).clamp(min=0))) * scale, scale

    def weights(self, g: torch.Tensor, scale: float) -> torch.Tensor:
        return (g[:, 0] - g[:, 1]) / scale
