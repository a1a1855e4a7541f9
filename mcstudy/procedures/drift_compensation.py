"""Drift compensation from a readout of the chip itself (Joshi et al., Nat. Commun. 2020).

Right after programming (at ``reference_time``) each analog layer of each chip is read
with a fixed set of input vectors and the mean |output| is stored. At time t the same
inputs are applied again and every output of the layer is multiplied digitally by
``α = reference / current`` — globally per layer (Joshi et al., Nat. Commun. 2020;
aihwkit's ``GlobalDriftCompensation``), or per output column. The readouts are reads
of the chip, so they carry its programming, drift and read noise. A read before
``reference_time`` comes before the reference readout it would need: it is scored
uncompensated (α = 1), as the chip would run then.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import Field, PositiveInt

from ..analog import AnalogNetwork
from ..hardware import ChipBatch, ChipRead
from ..registry import Params
from ..rng import fixed_stream
from .base import PROCEDURES, EvalData, Procedure
from ..vocabulary import REFERENCE_TIME_S


class DriftCompensationParams(Params):
    mode: Literal["global", "per_column"] = Field("global", description="one drift factor per layer, or one per output column")
    reference_time: float = Field(REFERENCE_TIME_S, gt=0, description="time of the reference readout after programming, s")
    readout_vectors: PositiveInt = Field(64, description="fixed input vectors per readout")


@PROCEDURES.register("drift_compensation", DriftCompensationParams)
class DriftCompensation(Procedure):
    """Scale each layer's outputs by reference/current mean |output| of a fixed readout."""

    params: DriftCompensationParams

    def _inputs(self, net: AnalogNetwork) -> list[torch.Tensor]:
        """The fixed readout inputs, uniform in [-1, 1]: a design constant, the same on every chip."""
        k = self.params.readout_vectors
        return [
            fixed_stream("drift_compensation", i, device=w.device).uniform(k, w.shape[1])[0] * 2 - 1
            for i, w in enumerate(net.nominal)
        ]

    def _readout(self, net: AnalogNetwork, inputs: list[torch.Tensor], read: ChipRead) -> list[torch.Tensor]:
        dims = (1, 2) if self.params.mode == "global" else (1,)
        return [o.abs().mean(dim=dims) for o in net.readout(inputs, read)]

    def read_times(self, times: Sequence[float]) -> list[float]:
        return [self.params.reference_time]

    def prepare(self, chips: ChipBatch, net: AnalogNetwork, data: EvalData) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        inputs = self._inputs(net)
        reference = self._readout(net, inputs, chips.read(self.params.reference_time, tag="reference"))
        return inputs, reference

    def evaluate(
        self,
        state: tuple[list[torch.Tensor], list[torch.Tensor]],
        chips: ChipBatch,
        read: ChipRead,
        t: float,
        net: AnalogNetwork,
        data: EvalData,
    ) -> dict[str, torch.Tensor]:
        inputs, reference = state
        if t < self.params.reference_time:  # the chip has not taken its reference readout yet: nothing to compensate with
            return data.score(net, read)
        current = self._readout(net, inputs, read)
        alphas: list[torch.Tensor | None] = [r / c.clamp(min=torch.finfo(c.dtype).tiny) for r, c in zip(reference, current)]
        return data.score(net, read, alphas)
