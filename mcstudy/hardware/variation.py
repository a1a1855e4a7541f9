"""Within-chip and between-chip variation of device conductances (Deng & Orshansky, DATE 2022; Jia et al., DAC 2018).

Deng & Orshansky (DATE 2022): a device's realised target is its nominal target times
(or plus) a random error with a between-chip part shared at a granularity and a
within-chip part drawn per device:

- multiplicative, lognormal (default): ``G = G_T·exp(θ_b + θ_w)``, ``θ ~ N(0, σ²)``
- additive, normal: ``G = max(G_T + G_max·(σ_b·z_b + σ_w·z_w), 0)``

Granularity says which devices share one draw: ``device`` (none), ``column`` (one per
physical crossbar column: an output within a row of tiles), ``tile`` (one per crossbar
tile), ``layer`` (one per layer), ``chip`` (one for the whole chip).
The two components come from separate sub-streams of the chip's stream, so switching
one on or off never changes the other's draws.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..registry import Params
from ..rng import Stream

from .layout import per_chip
from .tiles import TileGrid

Granularity = Literal["device", "column", "tile", "layer", "chip"]


class VariationComponent(Params):
    sigma: float = Field(0.0, ge=0, description="standard deviation (of log-conductance, or in units of G_max)")
    kind: Literal["lognormal", "normal"] = Field("lognormal", description="multiplicative lognormal error, or additive normal error in units of G_max")
    granularity: Granularity = Field("device", description="what shares one draw: device, column, tile, layer or chip")


class WithinChip(VariationComponent):
    """Independent per device by default."""


class BetweenChip(VariationComponent):
    """One draw per chip by default."""

    granularity: Granularity = Field("chip", description="what shares one draw: device, column, tile, layer or chip")


class Variation(Params):
    within: WithinChip = Field(WithinChip(), description="variation drawn independently on every chip (per device by default)")
    between: BetweenChip = Field(BetweenChip(), description="variation shared within a chip at its granularity (per chip by default)")


def component_draw(
    comp: VariationComponent, stream: Stream, layer: int, shape: tuple[int, int, int], grid: TileGrid, own: str | None = None
) -> torch.Tensor:
    """Standard normals for one layer's devices ``shape = (D, out, in)``, broadcastable to
    ``(C, D, out, in)`` and shared according to ``comp.granularity``. ``own`` names extra
    devices of the layer (its reference columns) laid out on ``grid`` with the layer's tile
    numbers: they share the chip's, the layer's and their tile's draws and have their own
    column and device draws."""
    d, n_out, n_in = shape
    key = (layer,) if own is None else (layer, own)
    if comp.granularity == "chip":
        return stream.normal(1).view(-1, 1, 1, 1)
    if comp.granularity == "layer":
        return stream.child(layer).normal(1).view(-1, 1, 1, 1)
    if comp.granularity == "tile":
        return grid.per_weight(stream.child(layer).normal(grid.n_tiles)).unsqueeze(1)
    if comp.granularity == "column":
        z = stream.child(*key).normal(grid.n_row_tiles, n_out)  # (C, row tiles, out)
        return z[:, grid.row_tile_of_input(z.device)].transpose(1, 2).unsqueeze(1)
    return stream.child(*key).normal(d, n_out, n_in)


def apply_variation(
    variation: Variation, g_target: torch.Tensor, stream: Stream, layer: int, g_max: float, grid: TileGrid | None = None,
    own: str | None = None,
) -> torch.Tensor:  # fmt: skip
    """Targets ``(D, out, in)`` µS, the same on every chip, or ``(C, D, out, in)``, each
    chip's own -> varied targets ``(C, D, out, in)`` µS for the chips of ``stream``."""
    shape = tuple(g_target.shape[-3:])
    if grid is None:
        grid = TileGrid(shape[1], shape[2], shape[2], shape[1])
    out = g_target if g_target.dim() == 4 else g_target.unsqueeze(0).expand(stream.n, *shape)
    log_gain: torch.Tensor | float = 0.0
    offset: torch.Tensor | float = 0.0
    for name, comp in (("within", variation.within), ("between", variation.between)):
        if comp.sigma == 0:
            continue
        z = component_draw(comp, stream.child(name), layer, shape, grid, own) * comp.sigma  # type: ignore[arg-type]
        if comp.kind == "lognormal":
            log_gain = log_gain + z
        else:
            offset = offset + z * g_max
    if isinstance(log_gain, torch.Tensor):
        out = out * per_chip(torch.exp, log_gain.expand(stream.n, *log_gain.shape[1:]))
    if isinstance(offset, torch.Tensor):
        out = (out + offset).clamp(min=0.0)
    return out


def chip_level_draws(variation: Variation, stream: Stream) -> dict[str, torch.Tensor]:
    """Per-chip standard-normal draws worth keeping in the store (chip granularity only)."""
    out: dict[str, torch.Tensor] = {}
    for name, comp in (("within", variation.within), ("between", variation.between)):
        if comp.granularity == "chip" and comp.sigma > 0:
            out[f"{name}_z"] = stream.child(name).normal(1)[:, 0]
    return out
