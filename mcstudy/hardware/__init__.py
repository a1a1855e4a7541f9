"""Device and circuit physics, batched over a leading chip dimension.

Importing this package registers the device models and mappings a study file can name.
"""

from . import ideal, mapping, pcm, rram, sram, table  # noqa: F401  (register)
from .base import DEVICES, MAPPINGS, DeviceModel
from .chip import ChipBatch, ChipRead, LayerRead, Population
from .mapping import Encoding, Mapping
from .periphery import PeripherySpec
from .tiles import TileGrid, TileSpec
from .variation import BetweenChip, Variation, VariationComponent, WithinChip

__all__ = [
    "DEVICES", "MAPPINGS", "BetweenChip", "ChipBatch", "ChipRead", "DeviceModel", "Encoding", "LayerRead",
    "Mapping", "PeripherySpec", "Population", "TileGrid", "TileSpec", "Variation", "VariationComponent", "WithinChip",
]  # fmt: skip
