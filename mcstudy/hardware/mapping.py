"""Weight <-> conductance mappings (Obradovic et al. 2018; García-Redondo et al. 2020; Mackin et al. 2022).

Every mapping works on normalised weights ``u = w / w_max`` in [-1, 1], where
``w_max`` is the full-scale weight of the weight's crossbar tile (the trainer's range,
the layer's or the tile's largest |w|: ``chip.WeightScale``), and splits them into
normalised device values ``v_d`` in [0, 1] for its ``D`` devices per weight. The
shared *encoding* then turns a device value into a conductance:

    G_d = G_min + (G_max − G_min) · a_d · f(Q(v_d))

- ``Q``: n-bit devices have ``2**bits`` levels; the mapper rounds to the nearest level
  of a linear grid (Obradovic et al.; García-Redondo et al.).
- ``f(x) = (1 − e^(−βx)) / (1 − e^(−β))``: the nonlinear level-to-conductance curve
  (β = ``nonlinearity``; 0 is linear). The mapper does not know it.
- ``G_min = G_max / on_off_ratio``: a finite on/off ratio, so "zero" is not zero.
- ``a_d``: the +/- asymmetry. The devices of the negative side respond with ``1 + asymmetry``
  times the scale of the positive side; the side with the larger scale spans the full
  range [G_min, G_max] and the other is shrunk to fit (``a⁺ = 1/(1 + asymmetry)``,
  ``a⁻ = 1`` for ``asymmetry > 0``; ``a⁺ = 1``, ``a⁻ = 1 + asymmetry`` for ``asymmetry < 0``),
  so no target ever leaves [G_min, G_max].

Reading decodes linearly, as the periphery does: ``w = w_max · Σ_d c_d (G_d − G_min)/(G_max − G_min)``
with the mapping's coefficients ``c_d`` (the G_min reference is subtracted digitally).

A *pre-distorting* mapper (``predistort: true``, differential and unipolar mappings — the
baseline a hardware-aware trainer must beat) knows the level curve and the asymmetry: for
each device it picks the level whose realised conductance is nearest the linear target,
``x = f⁻¹(s·v/a_d)`` rounded to the level grid in conductance space, with
``s = min_d a_d`` (the weaker side's full scale), and the digital decode divides by ``s``.
It cannot undo the levels' resolution or the on/off ratio's offset noise, only the curve's
and the asymmetry's deterministic distortion.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal

import torch
from pydantic import Field, PositiveInt

from ..registry import Params
from .base import MAPPINGS


Quantiser = Callable[[torch.Tensor], torch.Tensor]


class Encoding(Params):
    """Conductance encoding shared by every mapping."""

    bits: PositiveInt | None = Field(None, le=16, description="device precision: 2**bits levels (None: analog)")
    on_off_ratio: float | None = Field(None, gt=1, description="G_max / G_min (None: G_min = 0)")
    nonlinearity: float = Field(0.0, description="β of the level-to-conductance curve (0: linear)")
    asymmetry: float = Field(
        0.0, gt=-1, description="scale of the negative-side devices relative to the positive side, minus 1 (the larger side spans [G_min, G_max])"
    )


class MapperParams(Encoding):
    """An encoding whose mapper may pre-distort for the curve and the asymmetry it knows."""

    predistort: bool = Field(False, description="pick each device's level for its realised conductance (knowing the curve and the asymmetry)")


class Mapping(ABC):
    """Splits normalised weights over devices; encodes and decodes conductances."""

    devices_per_weight: int
    negative_side: tuple[bool, ...]  # which devices carry the negative side (asymmetry)
    reference_column: ClassVar[bool] = False
    """Whether a column's G_min·Σx offset is removed by a reference column: a column of
    devices at G_min in every column of tiles, whose current each column of the tile
    subtracts in the analog domain before its ADC (a unipolar crossbar whose G_min is
    above 0). Pairs cancel G_min between their own devices and need none."""

    def __init__(self, params: Encoding) -> None:
        self.params = params

    # -- what a mapping defines ---------------------------------------------------
    @abstractmethod
    def split(self, u: torch.Tensor, w: torch.Tensor, quantise: Quantiser, coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised weights ``u`` ``(out, in)`` in [-1, 1] (and the raw weights ``w``) ->
        device values ``(D, out, in)`` in [0, 1], put on the level grid with ``quantise``,
        and the decoding coefficients ``c_d`` broadcastable to ``(D, out, in)``. ``coeff``:
        the coefficients of devices already wired (a rewrite), where a mapping derives them
        from the weights (a unipolar block's sign)."""

    def with_off_state(self, on_off_ratio: float | None) -> "Mapping":
        """This mapping with ``on_off_ratio`` as its G_min where it sets none of its own (a
        device's finite off state, ``DeviceModel.on_off_ratio``); itself otherwise."""
        if on_off_ratio is None or self.params.on_off_ratio is not None:
            return self
        out = copy.copy(self)
        out.params = self.params.model_copy(update={"on_off_ratio": on_off_ratio})
        return out

    # -- shared encoding ----------------------------------------------------------
    def g_min(self, g_max: float) -> float:
        r = self.params.on_off_ratio
        return 0.0 if r is None else g_max / r

    def quantise(self, v: torch.Tensor) -> torch.Tensor:
        """Round device values in [0, 1] to the nearest of ``2**bits`` linear levels."""
        bits = self.params.bits
        if bits is None:
            return v
        steps = 2**bits - 1
        return torch.round(v * steps) / steps

    def level_curve(self, v: torch.Tensor) -> torch.Tensor:
        beta = self.params.nonlinearity
        if beta == 0:
            return v
        return (1 - torch.exp(-beta * v)) / (1 - math.exp(-beta))

    def side_scales(self) -> list[float]:
        """``a_d`` of every device: the negative side's scale is ``1 + asymmetry`` times the
        positive side's, and the larger of the two is 1, so targets stay in [G_min, G_max]."""
        raw = [1.0 + self.params.asymmetry if is_neg else 1.0 for is_neg in self.negative_side]
        top = max(raw)  # a mapping without negative-side devices (unipolar) is unaffected
        return [a / top for a in raw]

    def targets(
        self, w: torch.Tensor, w_max: torch.Tensor, g_max: float, quantise: Quantiser | None = None, coeff: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target conductances ``(D, out, in)`` in µS for weights ``w`` with per-weight
        full scale ``w_max`` (both ``(out, in)``), and the decoding coefficients. A smooth
        ``quantise`` (hardware-aware training) makes this differentiable in ``w``; ``coeff``
        keeps the coefficients of devices already programmed (see :meth:`split`)."""
        u = (w / w_max.clamp(min=torch.finfo(w.dtype).tiny)).clamp(-1.0, 1.0)
        a = torch.tensor(self.side_scales(), dtype=w.dtype, device=w.device)
        g_min = self.g_min(g_max)
        if self.predistorts:
            v, coeff = self.split(u, w, lambda x: x, coeff)  # the linear device values the decode needs
            return g_min + (g_max - g_min) * a.view(-1, 1, 1) * self.level_curve(self._predistorted(v, a)), coeff.to(w)
        v, coeff = self.split(u, w, quantise or self.quantise, coeff)
        return g_min + (g_max - g_min) * a.view(-1, 1, 1) * self.level_curve(v), coeff.to(w)

    @property
    def predistorts(self) -> bool:
        return bool(getattr(self.params, "predistort", False))

    def _predistorted(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Levels ``(D, out, in)`` whose realised value ``a_d·f(level)`` is nearest ``s·v``."""
        scale = float(a.min())
        y = (scale * v / a.view(-1, 1, 1)).clamp(0.0, 1.0)  # the value f must reach on each device
        beta = self.params.nonlinearity
        x = y if beta == 0 else -torch.log1p(-y * (1 - math.exp(-beta))) / beta  # f⁻¹
        bits = self.params.bits
        if bits is None:
            return x.clamp(0.0, 1.0)
        steps = 2**bits - 1
        lo = (torch.floor(x * steps) / steps).clamp(0.0, 1.0)
        hi = (torch.ceil(x * steps) / steps).clamp(0.0, 1.0)
        return torch.where((self.level_curve(hi) - y).abs() < (self.level_curve(lo) - y).abs(), hi, lo)

    def decode(self, g: torch.Tensor, coeff: torch.Tensor, w_max: torch.Tensor, g_max: float) -> torch.Tensor:
        """Weights ``(C, out, in)`` from conductances ``(C, D, out, in)`` (differentiable)."""
        return self.decode_flat(g.reshape(g.shape[0], -1), tuple(g.shape[1:]), coeff, w_max, g_max)  # type: ignore[arg-type]

    def plane_coefficients(self, coeff: torch.Tensor) -> list[float] | None:
        """The decoding coefficients as one number per device plane, or None when they
        vary within a plane (a unipolar mapping's per-block signs)."""
        if coeff.dim() == 3 and coeff.shape[1:] == (1, 1):
            return [float(c) for c in coeff.flatten().tolist()]
        return None

    def decode_scale(self, w_max: torch.Tensor, g_max: float) -> torch.Tensor:
        """``w_max / (G_max − G_min)``: weight per µS of decoded conductance, ``(out, in)``
        (divided by the weaker side's scale where the mapper pre-distorts)."""
        scale = w_max / (g_max - self.g_min(g_max))
        return scale / min(self.side_scales()) if self.predistorts else scale

    def decode_flat(
        self, g: torch.Tensor, shape: tuple[int, int, int], coeff: torch.Tensor, w_max: torch.Tensor, g_max: float
    ) -> torch.Tensor:
        """Weights ``(C, out, in)`` from conductances in the per-chip flat layout (``layout.py``:
        device ``d`` of weight ``k`` at ``d·out·in + k``; padding after), one device plane at
        a time without copying them out of the layout:
        ``w = w_max · Σ_d c_d (G_d − G_min)/(G_max − G_min)``, where a ±1 coefficient is an
        exact addition or subtraction. ``kernels.pcm_read_decode_finish`` repeats this arithmetic."""
        d, n_out, n_in = shape
        n, g_min = n_out * n_in, self.g_min(g_max)
        per_plane = self.plane_coefficients(coeff)
        coeffs: list[float] | list[torch.Tensor] = per_plane if per_plane is not None else list(coeff.to(g.dtype))
        w: torch.Tensor | None = None
        for i, ci in enumerate(coeffs):
            gi = g[:, i * n : (i + 1) * n].view(-1, n_out, n_in)
            gi = gi - g_min if g_min else gi
            if w is not None and isinstance(ci, float) and ci in (1.0, -1.0):
                w = w.add_(gi) if ci == 1.0 else w.sub_(gi)
            else:
                term = gi * ci
                w = term if w is None else w.add_(term)
        assert w is not None
        return w.mul_(self.decode_scale(w_max, g_max))

    def transfer(self, w: torch.Tensor, w_max: torch.Tensor, quantise: Quantiser | None = None) -> torch.Tensor:
        """The deterministic weight transfer function of ideal devices: the weights
        ``(out, in)`` that ``w`` becomes after mapping (levels, nonlinearity, on/off ratio,
        asymmetry) and linear decoding (Obradovic et al.)."""
        g, coeff = self.targets(w, w_max, 1.0, quantise)
        return self.decode(g.unsqueeze(0), coeff, w_max, 1.0)[0]

    def decode_variance(self, sigma: torch.Tensor, coeff: torch.Tensor, w_max: torch.Tensor, g_max: float) -> torch.Tensor:
        """Variance of the decoded weight ``(C, out, in)`` for independent device noise ``sigma`` (C, D, out, in) µS."""
        return ((coeff * sigma) ** 2).sum(1) * self.decode_scale(w_max, g_max) ** 2


@MAPPINGS.register("differential", MapperParams)
class DifferentialPair(Mapping):
    """Differential pair: ``w ∝ G⁺ − G⁻``, the device of the other sign at G_min."""

    devices_per_weight = 2
    negative_side = (False, True)

    def split(self, u: torch.Tensor, w: torch.Tensor, quantise: Quantiser, coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # one side takes u = 0 (clamping both would pass the gradient twice there)
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        v = quantise(torch.stack((torch.where(u >= 0, u, zero), torch.where(u < 0, -u, zero))))
        return v, torch.tensor([1.0, -1.0], dtype=torch.float64).view(2, 1, 1)


class MultiPairParams(Encoding):
    significance: float = Field(2.0, ge=1, description="F: weight of the most significant pair (Mackin: 2 was best)")


@MAPPINGS.register("multi_pair", MultiPairParams)
class MultiPair(Mapping):
    """Two pairs: ``w ∝ F·(G⁺ − G⁻) + (g⁺ − g⁻)`` (Mackin et al., Nat. Commun. 2022).

    Naive split, most significant pair first: the MSP carries as much of the weight as
    it can on its level grid, the LSP the remainder.
    """

    devices_per_weight = 4
    negative_side = (False, True, False, True)
    params: MultiPairParams

    def split(self, u: torch.Tensor, w: torch.Tensor, quantise: Quantiser, coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.params.significance
        total = u * (f + 1)
        msp = torch.sign(total) * quantise((total.abs() / f).clamp(max=1.0))
        lsp_value = (total - f * msp).clamp(-1.0, 1.0)
        lsp = torch.sign(lsp_value) * quantise(lsp_value.abs())
        v = torch.stack((msp.clamp(min=0), (-msp).clamp(min=0), lsp.clamp(min=0), (-lsp).clamp(min=0)))
        return v, torch.tensor([f, -f, 1.0, -1.0], dtype=torch.float64).view(4, 1, 1) / (f + 1)


class UnipolarParams(MapperParams):
    polarity: Literal["auto", "positive", "negative"] = Field(
        "auto", description="sign of each block; auto: the sign carrying more total |w|"
    )
    block_cols: PositiveInt | None = Field(None, description="outputs per single-sign block (None: the whole matrix)")


@MAPPINGS.register("unipolar", UnipolarParams)
class Unipolar(Mapping):
    """One device per weight; all weights of a matrix (or block of columns) share one sign
    (García-Redondo et al. 2020). Weights of the other sign are clipped to zero, which a
    unipolar-trained network avoids. Halves the devices of a differential pair."""

    devices_per_weight = 1
    negative_side = (False,)
    reference_column = True
    params: UnipolarParams

    def block_signs(self, w: torch.Tensor) -> torch.Tensor:
        """``(out, 1)`` sign of each output's block."""
        n_out = w.shape[0]
        if self.params.polarity != "auto":
            s = 1.0 if self.params.polarity == "positive" else -1.0
            return torch.full((n_out, 1), s, dtype=w.dtype, device=w.device)
        size = self.params.block_cols or n_out
        block = torch.arange(n_out, device=w.device) // size
        net = torch.zeros(int(block.max()) + 1, dtype=w.dtype, device=w.device).index_add_(0, block, w.sum(1))
        return torch.where(net[block] >= 0, 1.0, -1.0).to(w.dtype).view(-1, 1)

    def split(self, u: torch.Tensor, w: torch.Tensor, quantise: Quantiser, coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        signs = self.block_signs(w.detach()) if coeff is None else coeff[0].to(w)  # a wired column keeps its sign
        return quantise((u * signs).clamp(min=0)).unsqueeze(0), signs.unsqueeze(0)
