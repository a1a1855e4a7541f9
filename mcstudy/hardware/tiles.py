"""Crossbar tiles: how a layer's weight matrix is split over physical arrays.

A crossbar of ``rows × cols`` holds ``rows`` inputs (fan-in) and ``cols`` outputs. A
layer larger than one crossbar is split into a grid of tiles; each tile has a
weight-to-conductance scale (the weight that maps to the full conductance range: the
trainer's range, the layer's or the tile's own largest |w|, as the population's
``weight_scale`` says; ``chip.WeightScale``) and its own between-tile variation draw, and with an ADC each row of tiles digitises its
partial sums separately before they are added digitally.

For convolutions the unrolled kernel ``(out, in_channels·kh·kw)`` is the crossbar
matrix; a row tile holds whole input channels (``granule = kh·kw`` rows), so a tile's
partial sum is a convolution over a channel slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field, PositiveInt

from ..registry import Params


class TileSpec(Params):
    rows: PositiveInt = Field(256, description="crossbar rows (inputs) per tile")
    cols: PositiveInt = Field(256, description="crossbar columns (outputs) per tile")


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of one layer's ``(out, fan_in)`` matrix."""

    n_out: int
    n_in: int
    rows: int  # rows per tile (a multiple of the granule)
    cols: int

    @classmethod
    def build(cls, n_out: int, n_in: int, spec: TileSpec, granule: int = 1) -> "TileGrid":
        rows = max(granule, (spec.rows // granule) * granule)
        return cls(n_out, n_in, min(rows, n_in), min(spec.cols, n_out))

    @property
    def n_row_tiles(self) -> int:
        return -(-self.n_in // self.rows)

    @property
    def n_col_tiles(self) -> int:
        return -(-self.n_out // self.cols)

    @property
    def n_tiles(self) -> int:
        return self.n_row_tiles * self.n_col_tiles

    def row_slices(self) -> list[slice]:
        return [slice(a, min(a + self.rows, self.n_in)) for a in range(0, self.n_in, self.rows)]

    def tile_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(out, in)`` index of the tile holding each weight (row-tile major)."""
        r = torch.arange(self.n_in, device=device) // self.rows
        c = torch.arange(self.n_out, device=device) // self.cols
        return r[None, :] * self.n_col_tiles + c[:, None]

    def row_tile_of_input(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.arange(self.n_in, device=device) // self.rows

    def tile_abs_max(self, w: torch.Tensor) -> torch.Tensor:
        """Largest |w| of every tile, ``(n_tiles,)``."""
        idx = self.tile_index(w.device).flatten()
        out = torch.zeros(self.n_tiles, dtype=w.dtype, device=w.device)
        return out.scatter_reduce(0, idx, w.abs().flatten(), reduce="amax", include_self=True)

    def per_weight(self, per_tile: torch.Tensor) -> torch.Tensor:
        """Broadcast a ``(..., n_tiles)`` tensor to ``(..., out, in)``."""
        return per_tile[..., self.tile_index(per_tile.device)]

    def per_column(self, per_tile: torch.Tensor) -> torch.Tensor:
        """A per-tile quantity as ``(n_row_tiles, out)``: one value per physical column."""
        grid = per_tile.reshape(self.n_row_tiles, self.n_col_tiles)
        c = torch.arange(self.n_out, device=per_tile.device) // self.cols
        return grid[:, c]
