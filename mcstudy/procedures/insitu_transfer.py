"""In-situ low-precision transfer learning on every chip (Jia et al., DAC 2018).

Each chip keeps its analog layers as fabricated and retrains, by back-propagation
through its *own* forward pass, on a labelled calibration set. The forward pass is the
chip's (its variation, drift, mismatch, operating-point drift, noise, DAC and ADC); the
backward pass uses only what the chip can know: every layer's measured outputs, the
weights it stored (the learning stage's weights, the trained weights of the layers it
does not retrain) and its digital trims. It does not know its multipliers' mismatch, its
neurons' gain and offset errors or its devices' deviations, so the error reaches a
layer's inputs and weights through the stored weights (``AnalogNetwork.logits(known=)``),
and each ReLU passes it where the chip's own measured output is positive. The layers
retrained are:

- the last ``layers`` analog layers' weights and biases. During learning they live in
  the learning stage's fixed-point memory and act through that layer's multiplier
  mismatch, neurons and converters. What is scored depends on the devices: where they
  hold exact digital values (ideal devices: Jia et al.'s processor, whose weights sit in
  digital memory and whose multipliers and neurons are analog) the learned weights stay
  so; on devices with an analog state (PCM, RRAM, a measured table) they are written
  back to the layer's devices at the learning time — programming noise at the write,
  weights beyond the column's full scale clipped, drift and read noise counted from the
  write — and read ``read_after_write`` later (``ChipBatch.rewritten``); an SRAM cell
  takes the new value exactly, through its own fabrication mismatch;
- with ``trims``, every analog layer's neuron gain and offset (a digital trim of each
  neuron's output), where the population has operating-point drift or neuron mismatch
  (``auto``), always (``all``) or never (``none``).

Weights, gradients and updates are ``bits``-wide fixed point with stochastic rounding:
each tensor has a fixed grid (weights: ``headroom`` × the trained largest |w| of each
neuron, or of the layer; offsets: ``headroom`` × the layer's largest nominal output on the calibration batch;
gains: 1 ± ½), gradients are rounded onto ``bits`` levels of their own per-chip range,
and each update ``lr·g`` is rounded stochastically onto the parameter's grid and
clipped to it. ``bits: null`` trains in 32-bit float (the baseline the costs compare
with). The stochastic rounding draws from the chip's own stream, so a chip's result
never depends on the other chips of its block. The test split is only scored.

Costs (per chip): memory of the parameters, their gradients and the activations kept
for one minibatch's backward pass (the unrolled inputs of every layer the error
reaches), and the digital multiplies of the backward passes (weight and trim
gradients, error propagation down to the lowest trained layer) and the updates; the
forward passes run on the analog chip and are not counted. Priced with Horowitz 2014.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt

from ..analog import AnalogNetwork
from ..hardware import ChipBatch, ChipRead, Population
from ..registry import Params
from ..rng import Stream, fixed_stream
from ..times import TimeSeconds
from ..vocabulary import REFERENCE_TIME_S
from .base import PROCEDURES, EvalData, Procedure, layer_outputs, read_once_problems, with_before_and_costs
from .costs import LearningCost


class InsituTransferParams(Params):
    layers: int = Field(1, ge=0, description="retrain the last this many analog layers (0: only the neuron trims, an ablation)")
    trims: Literal["auto", "all", "none"] = Field(
        "auto", description="train every layer's neuron gain and offset: where the population has operating-point drift or neuron mismatch, always, or never"
    )
    bits: Annotated[int, Field(ge=2, le=32)] | None = Field(8, description="fixed-point width of weights, gradients and updates (null: 32-bit float)")
    samples: PositiveInt = Field(256, description="labelled calibration samples used (from the calibration split)")
    epochs: PositiveInt = Field(10, description="passes over the calibration samples")
    batch_size: PositiveInt = Field(32, description="calibration samples per update")
    lr: PositiveFloat = Field(0.05, description="SGD learning rate")
    headroom: PositiveFloat = Field(1.5, description="fixed-point range as a multiple of the trained value's range")
    weight_grid: Literal["per_neuron", "per_layer"] = Field("per_neuron", description="one fixed-point range per output neuron's weights, or per layer")
    record_before: bool = Field(True, description="also score the chip before learning (accuracy_before)")
    read_after_write: TimeSeconds = Field(
        REFERENCE_TIME_S, description="on devices that hold weights as analog states: from writing the learned weights back to the read that scores them, s"
    )


@dataclass
class _Param:
    """One trainable tensor ``(C, ...)`` of every chip with its fixed-point grid."""

    value: torch.Tensor
    step: torch.Tensor | None  # grid step, broadcastable to value (None: float)
    low: torch.Tensor
    high: torch.Tensor


@dataclass(frozen=True)
class Prepared:
    """What the procedure knows from the trained model (the same for every chip)."""

    output_range: list[float]  # largest |nominal output| of each analog layer on the calibration batch
    outputs: list[int]  # output values per input of each analog layer (out × positions)
    fan_in: list[int]


def _per_layer(params: dict[int, _Param], n_layers: int) -> list[torch.Tensor | None]:
    """Each analog layer's trainable trim, or None where it has none."""
    return [params[i].value if i in params else None for i in range(n_layers)]


def stochastic_round(v: torch.Tensor, step: torch.Tensor | float, u: torch.Tensor) -> torch.Tensor:
    """``v`` onto the grid ``step·ℤ``: down or up with probabilities given by the distance
    (``u`` uniform in (0, 1)), so the rounding is unbiased."""
    return torch.floor(v / step + u) * step


def quantise_gradient(g: torch.Tensor, bits: int, u: torch.Tensor) -> torch.Tensor:
    """``g`` ``(C, ...)`` on ``2**(bits−1) − 1`` levels of each chip's own largest |g|,
    stochastically rounded."""
    levels = 2 ** (bits - 1) - 1
    top = g.abs().reshape(g.shape[0], -1).amax(1).clamp(min=torch.finfo(g.dtype).tiny)
    step = (top / levels).reshape(-1, *([1] * (g.dim() - 1)))
    return torch.floor(g / step + u) * step


@PROCEDURES.register("insitu_transfer", InsituTransferParams)
class InsituTransfer(Procedure):
    """Retrain the last layers (and neuron trims) of every chip through its own forward pass, in fixed point."""

    params: InsituTransferParams
    needs_classes = True
    extra_metrics = ("accuracy_before", "learn_memory_bits", "learn_energy_pj", "float_memory_bits", "float_energy_pj")

    def _calibration(self, data: EvalData) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.params.samples
        return data.x_cal[:n], data.y_cal[:n]

    def problems(self, net: AnalogNetwork, data: EvalData) -> list[str]:
        out = []
        if data.x_cal.shape[0] == 0:
            out.append("insitu_transfer needs labelled calibration samples: set data.calibration_fraction above 0")
        if self.params.layers > len(net.layers):
            out.append(f"layers is {self.params.layers} but the network has {len(net.layers)} analog layers")
        return out + read_once_problems(net, data, "insitu_transfer")

    def prepare(self, chips: ChipBatch, net: AnalogNetwork, data: EvalData) -> Prepared:
        x, _ = self._calibration(data)
        ys = layer_outputs(net, x, net.nominal_read(), "insitu_transfer")
        return Prepared(
            output_range=[float(y.abs().amax()) for y in ys],
            outputs=[int(y[0, 0].numel()) for y in ys],
            fan_in=[int(w.shape[1]) for w in net.nominal],
        )

    # -- which tensors train -------------------------------------------------------

    def retrained(self, net: AnalogNetwork) -> list[int]:
        n = len(net.layers)
        return list(range(n - self.params.layers, n))

    def trimmed(self, chips: ChipBatch, net: AnalogNetwork) -> list[int]:
        mode = self.params.trims
        periph = chips.population.periphery
        has = periph.op_drift.gain > 0 or periph.op_drift.offset > 0 or periph.mismatch.offset > 0
        return list(range(len(net.layers))) if mode == "all" or (mode == "auto" and has) else []

    def _param(self, value: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float, span: torch.Tensor | float) -> _Param:
        """A trainable tensor on the grid of ``bits`` levels over ±``span`` (clipped to [low, high])."""
        bits = self.params.bits
        lo, hi = torch.as_tensor(low, dtype=value.dtype), torch.as_tensor(high, dtype=value.dtype)
        step = None if bits is None else torch.as_tensor(span, dtype=value.dtype) / (2 ** (bits - 1) - 1)
        return self._on_grid(_Param(value, step, lo.to(value.device), hi.to(value.device)))

    def _on_grid(self, p: _Param) -> _Param:
        if p.step is not None:
            p.value = torch.minimum(torch.maximum(torch.round(p.value / p.step) * p.step, p.low), p.high)
        return p

    def _init(self, chips: ChipBatch, net: AnalogNetwork, prep: Prepared) -> tuple[dict[int, _Param], dict[int, _Param], dict[int, _Param]]:
        c, h = chips.n_chips, self.params.headroom
        weights, scales, shifts = {}, {}, {}
        tiny = torch.finfo(torch.float32).tiny
        for i in self.retrained(net):
            w = net.reference[i]  # the trained network's weights as its trainer computes them
            per_neuron = self.params.weight_grid == "per_neuron"
            top = h * (w.abs().amax(1, keepdim=True) if per_neuron else w.abs().amax()).clamp(min=tiny)
            weights[i] = self._param(w.expand(c, *w.shape).clone(), -top, top, top)
        device = chips.stream.device
        for i in sorted({*self.retrained(net), *self.trimmed(chips, net)}):
            top = h * max(prep.output_range[i], tiny)
            shifts[i] = self._param(torch.zeros(c, net.nominal[i].shape[0], device=device), -top, top, top)
        for i in self.trimmed(chips, net):
            scales[i] = self._param(torch.ones(c, net.nominal[i].shape[0], device=device), 0.5, 1.5, 0.5)
        return weights, scales, shifts

    def _read(self, chips: ChipBatch, read: ChipRead, weights: dict[int, _Param]) -> ChipRead:
        """The chip read with the retrained layers' weights acting through their multipliers."""
        layers = list(read.layers)
        for i, p in weights.items():
            gain = chips.layers[i].gain
            w = p.value if gain is None else p.value * gain
            layers[i] = dataclasses.replace(layers[i], weight=w, var=None)
        return ChipRead(layers, read.periphery)

    # -- learning --------------------------------------------------------------------

    def learn(
        self, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData, prep: Prepared
    ) -> tuple[ChipRead, list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Train every chip of the block; returns the read that scores it and its trims."""
        weights, scales, shifts = self.learn_weights(chips, read, t, net, data, prep)
        n_layers = len(net.layers)
        return self._deployed(chips, read, t, weights), _per_layer(scales, n_layers), _per_layer(shifts, n_layers)

    def learn_weights(
        self, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData, prep: Prepared
    ) -> tuple[dict[int, _Param], dict[int, _Param], dict[int, _Param]]:
        """Train every chip of the block: the learning stage's weights, gains and offsets by analog layer."""
        p = self.params
        x, y = self._calibration(data)
        n = x.shape[0]
        weights, scales, shifts = self._init(chips, net, prep)
        params = [*weights.values(), *scales.values(), *shifts.values()]
        if not params:  # nothing to learn on this population (layers 0 and no trims)
            return weights, scales, shifts
        stream: Stream = chips.stream.child("insitu_transfer", float(t))
        n_layers = len(net.layers)
        step = 0
        for epoch in range(p.epochs):
            order = fixed_stream("insitu_transfer.order", epoch, device=x.device).uniform(n)[0].argsort()
            for a in range(0, n, p.batch_size):
                idx = order[a : a + p.batch_size]
                for q in params:
                    q.value.requires_grad_(True)
                with torch.enable_grad():
                    logits = net.logits(
                        x[idx],
                        self._read(chips, read, weights),
                        _per_layer(scales, n_layers),
                        sample_offset=epoch * n + a,
                        out_shifts=_per_layer(shifts, n_layers),
                        purpose="insitu_transfer",
                        known=[weights[i].value if i in weights else net.reference[i].unsqueeze(0) for i in range(n_layers)],
                    )
                    c, b, k = logits.shape
                    loss = F.cross_entropy(logits.reshape(c * b, k), y[idx].repeat(c), reduction="none").reshape(c, b).mean(1).sum()
                    with net.invariant():  # the backward pass as invariant as the chip pass
                        grads = torch.autograd.grad(loss, [q.value for q in params])
                with torch.no_grad():
                    for j, (q, g) in enumerate(zip(params, grads)):
                        q.value = q.value.detach()
                        if p.bits is None:
                            q.value = torch.minimum(torch.maximum(q.value - p.lr * g, q.low), q.high)
                            continue
                        draws = stream.child(step, j)
                        gq = quantise_gradient(g, p.bits, draws.child("gradient").uniform(*g.shape[1:], dtype=g.dtype))
                        assert q.step is not None
                        q.value = q.value - stochastic_round(p.lr * gq, q.step, draws.child("update").uniform(*g.shape[1:], dtype=g.dtype))
                        self._on_grid(q)  # clipped, and exact multiples of the step whatever the float rounding
                step += 1
        for q in params:
            q.value = q.value.detach()
        return weights, scales, shifts

    def _deployed(self, chips: ChipBatch, read: ChipRead, t: float, weights: dict[int, _Param]) -> ChipRead:
        """The read that scores what was learned at time ``t``: the learning stage's weights
        through their multipliers where the devices hold digital values (Jia et al.'s
        processor: ``DeviceModel.digital_weights``); else the weights written back to each
        retrained layer's devices at ``t`` (programming noise, drift from the write) and, with
        every other layer, read ``read_after_write`` later: the scoring read is one instant
        of the whole chip, not the read learning fitted (whose slow noise has partly moved)."""
        if chips.population.device.digital_weights or not weights:
            return self._read(chips, read, weights)
        later = t + self.params.read_after_write
        layers = list(chips.read(later).layers)  # every layer at the scoring instant (its read noise is that instant's)
        for i, p in weights.items():
            layers[i] = chips.rewritten(i, p.value, t, "insitu_transfer").read_layer(i, later)
        return ChipRead(layers, read.periphery)

    def read_times(self, times: Sequence[float]) -> list[float]:
        return [t + self.params.read_after_write for t in times]  # the scoring reads after a write-back

    def population_problems(self, net: AnalogNetwork, population: Population) -> list[str]:
        enc = population.mapping.params
        curved = enc.nonlinearity != 0 or enc.asymmetry != 0  # the mapping's transfer is not the identity on its own levels
        if population.device.digital_weights or self.params.layers == 0 or not curved:
            return []
        if any(not torch.equal(r, n) for r, n in zip(net.reference, net.nominal)):
            return [
                "insitu_transfer writes what it learns back to the devices through the population's curve-blind mapping, which "
                "would put weights already through the trainer's transfer function (a hardware-aware variant) through the "
                "device curve again: run it on ideal devices, on a mapping without nonlinearity and asymmetry, or with layers: 0"
            ]
        return []

    def cost(self, chips: ChipBatch, net: AnalogNetwork, prep: Prepared, n: int) -> LearningCost:
        """Counts for one chip (see the module docstring)."""
        p = self.params
        retrained, trimmed = self.retrained(net), self.trimmed(chips, net)
        if not retrained and not trimmed:
            return LearningCost(state_values=0, multiplies=0)
        lowest = min([*retrained, *trimmed])
        macs = [prep.outputs[i] * prep.fan_in[i] for i in range(len(net.layers))]
        per_sample = 0
        kept = 0
        for i in range(lowest, len(net.layers)):
            if i in retrained:
                per_sample += macs[i]  # weight gradient
            if i in trimmed:
                per_sample += 2 * prep.outputs[i]  # gain gradient, error through the gain
            if i > lowest:
                per_sample += macs[i]  # error to the layer's inputs
            if i in retrained or i in trimmed:
                kept += macs[i] // net.nominal[i].shape[0]  # the layer's unrolled inputs: fan_in × positions
        n_params = sum(net.nominal[i].numel() for i in retrained)
        n_params += sum(net.nominal[i].shape[0] for i in sorted({*retrained, *trimmed}))  # offsets
        n_params += sum(net.nominal[i].shape[0] for i in trimmed)  # gains
        steps = p.epochs * math.ceil(n / p.batch_size)
        return LearningCost(
            state_values=2 * n_params + min(p.batch_size, n) * kept,
            multiplies=p.epochs * n * per_sample + steps * 2 * n_params,
        )

    def evaluate(
        self, state: Prepared, chips: ChipBatch, read: ChipRead, t: float, net: AnalogNetwork, data: EvalData
    ) -> dict[str, torch.Tensor]:
        before = data.score(net, read)["accuracy"] if self.params.record_before else None
        tuned, scales, shifts = self.learn(chips, read, t, net, data, state)
        out = data.score(net, tuned, scales, shifts)
        n = self._calibration(data)[0].shape[0]
        return with_before_and_costs(out, before, self.cost(chips, net, state, n).figures(self.params.bits))
