"""A hardware population and a programmed block of its chips.

``Population.program(weights, stream)`` is the moment of fabrication and programming:
variation and every per-device draw are fixed then. The returned :class:`ChipBatch`
is read at any time after programming; each read draws fresh read noise from a
sub-stream named by the read's tag and time, so "the same chip, later" and "a new
chip" can never be confused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Params
from ..rng import Stream
from .base import DEVICES, MAPPINGS, DeviceModel, DeviceState, Mapping
from .variation import Variation, apply_variation, chip_level_draws


@dataclass(frozen=True)
class Population:
    """The physics of one hardware population: device model, mapping and variation."""

    device: DeviceModel
    mapping: Mapping
    variation: Variation

    @classmethod
    def build(cls, device: str, device_params: Params, mapping: str, mapping_params: Params, variation: Variation) -> "Population":
        return cls(DEVICES.get(device).obj(device_params), MAPPINGS.get(mapping).obj(mapping_params), variation)

    def program(self, weights: list[torch.Tensor], stream: Stream) -> "ChipBatch":
        """Fabricate and program the chips of ``stream`` with weight matrices ``weights``
        (each ``(out, in)``, the same for every chip)."""
        g_max = self.device.g_max
        layers: list[_Layer] = []
        for i, w in enumerate(weights):
            targets, scale = self.mapping.targets(w, g_max)
            varied = apply_variation(self.variation, targets.to(stream.device), stream.child("variation"), i, g_max)
            state = self.device.program(varied, stream.child("program", i))
            layers.append(_Layer(state=state, scale=scale))
        return ChipBatch(self, stream, layers)

    def draw_names(self) -> list[str]:
        """Names of the per-chip draws :meth:`ChipBatch.draws` returns."""
        return sorted(chip_level_draws(self.variation, Stream(torch.zeros(1, dtype=torch.int64))))


@dataclass(frozen=True)
class _Layer:
    state: DeviceState
    scale: float


@dataclass(frozen=True)
class ChipBatch:
    """A block of programmed chips of one population (leading dimension: chip)."""

    population: Population
    stream: Stream
    layers: list[_Layer]

    @property
    def n_chips(self) -> int:
        return self.stream.n

    def read(self, t: float, tag: str = "read") -> list[torch.Tensor]:
        """Effective weights ``(C, out, in)`` of every layer, read ``t`` s after programming.

        Reads with the same ``tag`` and ``t`` see the same read noise (they are one read);
        a different tag is a different read of the same chips.
        """
        device, mapping = self.population.device, self.population.mapping
        return [
            mapping.weights(device.read(layer.state, t, self.stream.child(tag, float(t), i)), layer.scale)
            for i, layer in enumerate(self.layers)
        ]

    def draws(self) -> dict[str, torch.Tensor]:
        """Per-chip draws worth keeping in the store, each ``(C,)``."""
        return chip_level_draws(self.population.variation, self.stream.child("variation"))
