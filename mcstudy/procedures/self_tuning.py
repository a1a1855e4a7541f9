"""Self-tuning of layer activations on every chip (Deng & Orshansky, DATE 2022).

At each drift time each chip runs a small calibration batch (from the calibration
split), measures every analog layer's output statistics — mean and standard deviation,
per layer or per output channel — and sets that layer's digital output trim so that
they match the nominal model's statistics on the same batch:

    a = σ_nominal / σ_chip,   b = μ_nominal − a·μ_chip   (``mode: scale_shift``)
    a = σ_nominal / σ_chip,   b = 0                      (``mode: scale``)

With ``when: once`` each chip is tuned a single time, on a read at ``tune_time`` after
programming, and keeps those trims at every later time (as a chip calibrated at the
factory or at power-up would): drift after the tuning is then not corrected, and a time
before ``tune_time`` is scored untuned (the trims do not exist yet). At every
time, the tuning read is the scored read itself, or, with ``lead``, a read that long
before it — scored on a read it did not tune on (with PCM's 1/f noise the two share the
part of the read noise the law gives them: ``ChipBatch.read``).

Layers are tuned in order, each seeing the already-tuned layers before it (one pass).
The nominal statistics are those of the trained (digital) network, computed once and
stored with the deployed model. Statistics are taken after the neurons and before the
digital bias, which does not change the standard deviation and shifts the mean by a
known constant. A pure per-chip gain (between-chip variation of a whole chip or layer)
is cancelled exactly; an ideal chip is left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from pydantic import Field, PositiveInt

from ..analog import AnalogNetwork
from ..errors import McStudyError
from ..hardware import ChipBatch, ChipRead
from ..registry import Params
from ..times import Duration, TimeSeconds
from .base import PROCEDURES, EvalData, Procedure, layer_outputs, read_once_problems, with_before_and_costs
from .costs import LearningCost
from ..vocabulary import REFERENCE_TIME_S

Stats = tuple[torch.Tensor, torch.Tensor]  # mean, std, each (C, 1|out)


@dataclass(frozen=True)
class Reference:
    """The nominal model's per-layer statistics and its output values per input; with
    ``when: once``, the chips' trims from their tuning read."""

    stats: list[Stats]
    outputs: int
    fixed: tuple[list[torch.Tensor], list[torch.Tensor | None]] | None = None


class SelfTuningParams(Params):
    mode: Literal["scale", "scale_shift"] = Field("scale_shift", description="rescale only, or rescale and shift")
    granularity: Literal["layer", "channel"] = Field("channel", description="one trim per layer, or per output channel")
    samples: PositiveInt = Field(128, description="calibration inputs per tuning (from the calibration split)")
    record_before: bool = Field(True, description="also score the chip before tuning (accuracy_before)")
    when: Literal["every_time", "once"] = Field("every_time", description="tune at every drift time, or once (at tune_time) and keep the trims")
    lead: Duration = Field(
        0.0, description="when: every_time — tune on a read this long before each scored read, not on the scored read itself (0: on it), s"
    )
    tune_time: TimeSeconds = Field(REFERENCE_TIME_S, description="time after programming of the single tuning read (when: once), s")


def _stats(y: torch.Tensor, granularity: str) -> Stats:
    """Mean and (population) standard deviation of ``y`` ``(C, N, out, *spatial)`` per chip."""
    c, n, out = y.shape[:3]
    v = y.reshape(c, n, out, -1).transpose(1, 2).reshape(c, out, -1)  # (C, out, N·spatial)
    if granularity == "layer":
        v = v.reshape(c, 1, -1)
    v = v.to(torch.float64)
    return v.mean(-1).to(y.dtype), v.std(-1, correction=0).to(y.dtype)


@PROCEDURES.register("self_tuning", SelfTuningParams)
class SelfTuning(Procedure):
    """Match each layer's output statistics on a calibration batch to the nominal model's."""

    params: SelfTuningParams
    needs_classes = True
    extra_metrics = ("accuracy_before", "learn_memory_bits", "learn_energy_pj", "float_memory_bits", "float_energy_pj")

    def _batch(self, data: EvalData) -> torch.Tensor:
        return data.x_cal[: self.params.samples]

    def problems(self, net: AnalogNetwork, data: EvalData) -> list[str]:
        if data.x_cal.shape[0] == 0:
            return ["self_tuning needs calibration samples: set data.calibration_fraction above 0"]
        return read_once_problems(net, data, "self_tuning")

    def read_times(self, times: Sequence[float]) -> list[float]:
        p = self.params
        if p.when == "once":
            if p.lead > 0:
                raise McStudyError("lead is for when: every_time (a chip tuned once tunes at tune_time); set one or the other")
            if times and p.tune_time > max(times):
                raise McStudyError(f"tune_time {p.tune_time:g} s is after every study time: the trims would never be used")
            return [p.tune_time]
        if p.lead > 0:
            early = [t for t in times if t - p.lead <= 0]
            if early:
                raise McStudyError(f"self_tuning's lead of {p.lead:g} s puts the tuning read for time {early[0]:g} s at or before programming: set lead below {min(times):g} s")
            return [t - p.lead for t in times]
        return []

    def prepare(self, chips: ChipBatch, net: AnalogNetwork, data: EvalData) -> Reference:
        """The nominal model's statistics, layer by layer (the same for every chip)."""
        x = self._batch(data)
        ys = layer_outputs(net, x, net.nominal_read(), "self_tuning")
        ref = Reference([_stats(y, self.params.granularity) for y in ys], sum(y[0, 0].numel() for y in ys))
        if self.params.when == "once":  # one tuning read after programming; its trims are kept
            ref = Reference(ref.stats, ref.outputs, self.trims(ref, chips.read(self.params.tune_time, tag="self_tuning"), net, data))
        return ref

    def trims(self, reference: Reference, read: ChipRead, net: AnalogNetwork, data: EvalData) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Each layer's scale and shift ``(C, 1|out)`` for the chips of ``read``."""
        p = self.params
        scales: list[torch.Tensor] = []
        shifts: list[torch.Tensor | None] = []

        def tune(i: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            mu, sd = _stats(y, p.granularity)
            mu_ref, sd_ref = reference.stats[i]
            a = torch.where(sd > 0, sd_ref / sd.clamp(min=torch.finfo(sd.dtype).tiny), torch.ones_like(sd))
            b = mu_ref - a * mu if p.mode == "scale_shift" else None
            scales.append(a)
            shifts.append(b)
            return a, b

        with torch.no_grad():
            net.logits(self._batch(data), read, purpose="self_tuning", calibrate=tune)
        return scales, shifts

    def cost(self, reference: Reference, n: int) -> LearningCost:
        """Statistics of every output over ``n`` inputs (one square per output value for
        the variance) and a division and a multiply per trim; state: the nominal
        statistics and the trims."""
        values = sum(int(mu.numel()) for mu, _ in reference.stats)
        trims = values * (2 if self.params.mode == "scale_shift" else 1)
        return LearningCost(state_values=2 * values + trims, multiplies=n * reference.outputs + 2 * trims)

    def evaluate(
        self, state: Reference, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData
    ) -> dict[str, torch.Tensor]:
        before = data.score(net, read)["accuracy"] if self.params.record_before else None
        if state.fixed is not None and t < self.params.tune_time:  # before its tuning read: the chip runs untuned
            out = data.score(net, read)
            return with_before_and_costs(out, before, self.cost(state, self._batch(data).shape[0]).figures(None))
        if state.fixed is not None:
            scales, shifts = state.fixed
        else:
            tuning = read if self.params.lead == 0 else chips.read(t - self.params.lead, tag="self_tuning")
            scales, shifts = self.trims(state, tuning, net, data)
        out = data.score(net, read, scales, shifts)
        return with_before_and_costs(out, before, self.cost(state, self._batch(data).shape[0]).figures(None))
