"""Device and circuit physics, batched over a leading chip dimension.

Importing this package registers the device models and mappings a study file can name.
"""

from . import ideal, mapping, pcm  # noqa: F401  (register)
from .base import DEVICES, MAPPINGS, DeviceModel, Mapping
from .chip import ChipBatch, Population
from .variation import BetweenChip, Variation, VariationComponent, WithinChip

__all__ = [
    "DEVICES", "MAPPINGS", "BetweenChip", "ChipBatch", "DeviceModel", "Mapping",
    "Population", "Variation", "VariationComponent", "WithinChip",
]  # fmt: skip
