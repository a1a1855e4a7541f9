"""Running a torch model on a block of chips, vectorised over chips."""

from .layers import ChipConv2d, ChipLayer, ChipLinear
from .network import AnalogNetwork

__all__ = ["AnalogNetwork", "ChipConv2d", "ChipLayer", "ChipLinear"]
