"""Plain inference: the chip as read, no correction."""

from __future__ import annotations

from typing import Any

import torch

from ..analog import AnalogNetwork
from ..hardware import ChipBatch, ChipRead
from ..registry import NoParams
from .base import PROCEDURES, EvalData, Procedure


@PROCEDURES.register("inference", NoParams)
class Inference(Procedure):
    """Score the test split on each chip as it reads at time t."""

    def evaluate(
        self, state: Any, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData
    ) -> dict[str, torch.Tensor]:
        return data.score(net, read)
