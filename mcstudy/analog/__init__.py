"""Running a torch model on a block of chips, vectorised over chips."""

from .composite import ChipAttention, ChipLSTM
from .layers import ChipConv1d, ChipConv2d, ChipLayer, ChipLinear
from .network import AnalogNetwork

__all__ = ["AnalogNetwork", "ChipAttention", "ChipConv1d", "ChipConv2d", "ChipLayer", "ChipLinear", "ChipLSTM"]
