"""Hardware-aware training (Obradovic et al., arXiv 1809.04982).

The deterministic hardware transfer function — 2**bits conductance levels, the nonlinear
level-to-conductance curve, the on/off ratio and the +/- asymmetry of
``mcstudy.hardware.mapping`` — is in the forward pass. Its staircase is replaced by a
smooth surrogate (:func:`soft_levels`: one normalised sigmoid per level step, continuous
and continuously differentiable for every τ > 0), whose width τ is annealed from
``tau_start`` to 0 over the first ``anneal`` fraction of training; the rest of training
(and the deployed model) uses the exact function, with straight-through gradients.
Activations are quantised like the periphery's DAC.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
from pydantic import Field

from ..hardware.base import MAPPINGS
from ..hardware.mapping import Encoding, Mapping, Quantiser
from ..registry import registered_name
from .base import TRAINERS
from .quantized import QATParams, _Quantising, ste, weight_ranges


def soft_step(frac: torch.Tensor, tau: float) -> torch.Tensor:
    """One smoothed level step on ``frac`` in [0, 1]: the logistic sigmoid of width ``tau``
    (level steps) centred on ½, rescaled to run from exactly 0 at ``frac = 0`` to exactly 1
    at ``frac = 1``:

        s(f) = ½ + ½·tanh((f − ½)/(2τ)) / tanh(1/(4τ))

    (``σ(x) = ½ + ½·tanh(x/2)``, so this is ``(σ((f−½)/τ) − σ(−½/τ)) / (σ(½/τ) − σ(−½/τ))``).
    Its slope is the same at both ends (the sigmoid's derivative is even about ½), so
    consecutive steps join with a continuous value *and* a continuous derivative; it is
    monotone, and as τ → 0 it tends to the unit step at ½ (rounding)."""
    half = 0.5 / math.tanh(0.25 / tau)
    return 0.5 + half * torch.tanh((frac - 0.5) / (2.0 * tau))


def soft_levels(bits: int | None, tau: float) -> Quantiser:
    """A smooth staircase onto the ``2**bits`` levels ``k/(2**bits − 1)`` of [0, 1]
    (Obradovic et al.'s continuously differentiable surrogate of the level grid):
    ``q(v) = (⌊y⌋ + s(y − ⌊y⌋)) / (2**bits − 1)`` with ``y = v·(2**bits − 1)`` and the
    normalised sigmoid step :func:`soft_step` of width ``tau`` (in level steps). ``q`` is
    continuous and continuously differentiable in ``v`` for every ``tau > 0``, monotone,
    exact at every level, and tends to rounding as ``tau → 0``; at ``tau = 0`` it is
    exact rounding with straight-through gradients."""

    def q(v: torch.Tensor) -> torch.Tensor:
        if bits is None:
            return v
        steps = 2**bits - 1
        if tau <= 0:
            return ste(v, torch.round(v * steps) / steps)
        y = v * steps
        base = torch.floor(y).detach()
        return (base + soft_step(y - base, tau)) / steps

    return q


MappingName = registered_name(MAPPINGS)


class HWAParams(QATParams, Encoding):
    mapping: MappingName = Field("differential", description="the mapping whose transfer function training sees (a registered mapping)")
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
        the transfer function the network was trained with at τ = 0 (the transfer's
        output, mapped again, would land on other levels of a nonlinear curve)."""

    @torch.no_grad()
    def reference(self, ws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The exact transfer function (τ = 0) of the stored weights: what the forward pass
        computes at the end of training, and what ideal devices of the encoding realise."""
        return self.transferred(ws, 0.0)
