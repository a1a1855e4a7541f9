"""Uniform scaling and unipolar weight matrices (García-Redondo et al., arXiv 1910.13850).

Every layer shares one weight range and one activation range (``ranges: shared``,
``activation_mode: fixed``), so one analog block design serves every layer. With
``sign: layer`` every weight matrix is constrained to one sign, so each weight needs a
single device (a unipolar crossbar) instead of a differential pair; with ``sign: block``
every sub-matrix of ``block_cols`` output columns has its own sign (deploy it with the
``unipolar`` mapping's matching ``block_cols``), chosen from a short unconstrained
warm-up as the sign carrying more of the block's weight — the rule the mapping itself
uses. The trainer searches layer widths and, for ``sign: layer``, per-layer polarities:
each candidate is trained (quantisation-aware, sign-projected after every step) and
scored under a device model on the *calibration* split — never the test split — and the
best candidate is the variant. Every candidate's accuracy, device count and ADC count
are reported. Candidates are scored exactly as they deploy: with the trainer's shared
weight range as the weight-to-conductance scale (``weight_scale: trained``), and with the
DAC the trainer quantised its activations to (bits, range, mode and sign).

Counting: devices = Σ weights × devices per weight (1 unipolar, 2 differential), plus,
for a unipolar crossbar whose off state G_min is above 0, its reference columns (one
device per input row in each column of tiles: ``Mapping.reference_column``); ADCs =
Σ outputs × row tiles (of ``tile_rows`` inputs) × ADCs per output: 1 for a unipolar
column (the reference current is subtracted before it), ``differential_adcs`` for a
differential pair — 1 where G⁺ − G⁻ is subtracted in the analog domain before one ADC
(the default: the strongest differential baseline), 2 where each of the pair's columns
is digitised and subtracted digitally.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..analog import AnalogNetwork
from ..data import Dataset
from ..hardware import DEVICES, MAPPINGS, PeripherySpec, Population, TileSpec, Variation
from ..hardware.periphery import ADCSpec
from ..registry import Entry, Params, registered_name
from ..rng import chip_stream
from .base import TRAINERS, TrainOutcome, analog_weight_names
from .quantized import QATParams, QuantizationAware
from ..vocabulary import REFERENCE_TIME_S


def _defaults_make_it(entry: Entry[Any]) -> str | None:
    try:
        entry.params()
    except ValueError as e:
        return f"device {entry.name!r} needs parameters its defaults do not give ({e.__class__.__name__}); score with another device"
    return None


ScoringDevice = registered_name(DEVICES, _defaults_make_it)


class UniformUnipolarParams(QATParams):
    ranges: Literal["per_layer", "shared"] = Field("shared", description="one weight range for every layer (uniform scaling), or one per layer")
    activation_mode: Literal["per_vector", "fixed"] = Field("fixed", description="one activation range for every layer (uniform scaling: fixed), or each input vector's own")
    sign: Literal["none", "layer", "block"] = Field(
        "layer", description="one sign per weight matrix, per block of block_cols output columns, or unconstrained (differential)"
    )
    block_cols: PositiveInt = Field(8, description="output columns per single-sign sub-matrix (sign: block)")
    warmup_epochs: PositiveInt = Field(5, description="unconstrained epochs that choose each block's sign (sign: block)")
    widths: tuple[tuple[PositiveInt, ...], ...] = Field((), description="hidden widths to search (empty: the study's model)")
    max_candidates: PositiveInt = Field(16, description="stop enumerating polarity patterns beyond this many candidates")
    score_device: ScoringDevice = Field("ideal", description="device of the scoring chips (a registered device that its defaults make)")
    score_sigma: float = Field(0.0, ge=0, description="within-chip lognormal σ of the scoring chips")
    score_chips: PositiveInt = Field(8, description="chips each candidate is scored on (calibration split)")
    score_adc_bits: PositiveInt | None = Field(None, le=24, description="ADC bits of the scoring chips (None: exact outputs), as the deployed population's")
    score_adc_range: float = Field(10.0, gt=0, description="ADC full scale of the scoring chips, as the deployed population's")
    tile_rows: PositiveInt = Field(256, description="crossbar rows per tile of the scoring chips and the ADC count")
    differential_adcs: Literal[1, 2] = Field(
        1, description="ADCs per differential output: 1 (analog subtraction of G⁺ − G⁻) or 2 (each column digitised)"
    )


@TRAINERS.register("uniform_unipolar", UniformUnipolarParams)
class UniformUnipolar(QuantizationAware):
    """Shared weight and activation ranges, single-sign matrices, and a search over widths and polarities."""

    needs_classes = True

    params: UniformUnipolarParams
    signs: Sequence[torch.Tensor] = ()  # per analog layer: (out,) ±1, the sign of each output's weights

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        for name, s in zip(names, self.signs):
            w = params[name]
            s = s.view(-1, *([1] * (w.dim() - 1)))
            w.copy_(torch.where(s > 0, w.clamp(min=0), w.clamp(max=0)))

    def run(self, model: str, model_params: Params, data: Dataset, seed: int) -> TrainOutcome:
        p = self.params
        archs = [model_params] if not p.widths else [model_params.model_copy(update={"hidden": w}) for w in p.widths]
        best: tuple[float, int, Any] | None = None
        report: list[dict[str, Any]] = []
        for arch in archs:
            net = self.start(model, arch, data, seed)
            outs = [int(dict(net.named_parameters())[n].shape[0]) for n in analog_weight_names(net)]
            if p.sign == "none":
                patterns: list[tuple[str, list[torch.Tensor]]] = [("differential", [])]
            elif p.sign == "layer":
                patterns = [
                    ("".join("+" if s > 0 else "-" for s in signs), [torch.full((o,), float(s)) for o, s in zip(outs, signs)])
                    for signs in itertools.product((1, -1), repeat=len(outs))
                ]
            else:
                patterns = [(f"blocks of {p.block_cols}", self._block_signs(model, arch, data, seed))]
            for polarity, signs in patterns[: p.max_candidates]:
                trained = self._candidate(model, arch, data, seed, signs)
                accuracy = self._score(trained, data, unipolar=bool(signs))
                devices, adcs = self._counts(trained, unipolar=bool(signs))
                row = {"hidden": "-".join(map(str, getattr(arch, "hidden", ()))) or "-", "polarity": polarity,
                       "calibration_accuracy": accuracy, "devices": devices, "adcs": adcs}  # fmt: skip
                report.append(row)
                key = (accuracy, -devices)
                if best is None or key > best[:2]:
                    best = (accuracy, -devices, (trained, arch))
        assert best is not None
        trained, arch = best[2]
        return TrainOutcome(trained[0], arch, trained[1], report, self.ranges(trained[0]))

    def _block_signs(self, model: str, arch: Params, data: Dataset, seed: int) -> list[torch.Tensor]:
        """Each output's block sign, from a short unconstrained warm-up (the mapping's rule)."""
        p = self.params
        net = self.start(model, arch, data, seed)
        QuantizationAware(p.model_copy(update={"epochs": p.warmup_epochs})).fit(net, data, seed)
        mapping = MAPPINGS.get("unipolar")
        rule = mapping.obj(mapping.params(bits=p.bits, block_cols=p.block_cols))
        params = dict(net.named_parameters())
        return [rule.block_signs(params[n].detach().reshape(params[n].shape[0], -1)).view(-1) for n in analog_weight_names(net)]

    def _candidate(self, model: str, arch: Params, data: Dataset, seed: int, signs: list[torch.Tensor]) -> tuple[nn.Module, list[float]]:
        net = self.start(model, arch, data, seed)
        trainer = UniformUnipolar(self.params)
        trainer.signs = signs
        if signs:  # start inside the constraint
            trainer.after_step(net, analog_weight_names(net))
        history = trainer.fit(net, data, seed)
        return net, history

    def _population(self, unipolar: bool) -> Population:
        p = self.params
        mapping = MAPPINGS.get("unipolar" if unipolar else "differential")
        device = DEVICES.get(p.score_device)
        blocks = {"block_cols": p.block_cols} if unipolar and p.sign == "block" else {}
        return Population(
            device.obj(device.params()),
            mapping.obj(mapping.params(bits=p.bits, **blocks)),
            Variation.model_validate({"within": {"sigma": p.score_sigma}}),
            tile=TileSpec(rows=p.tile_rows),
            periphery=PeripherySpec(
                dac=self._dac(), adc=ADCSpec(bits=p.score_adc_bits, range=p.score_adc_range)
            ),
        )

    def _score(self, trained: tuple[nn.Module, list[float]], data: Dataset, unipolar: bool) -> float:
        net = AnalogNetwork(trained[0])
        stream = chip_stream(0, "uniform_unipolar.score", range(self.params.score_chips))
        chips = self._population(unipolar).program(net.nominal, stream, net.granules, net.layer_ranges(self.ranges(trained[0])))
        x, y = torch.from_numpy(data.x_cal), torch.from_numpy(data.y_cal)
        return float(net.score(x, y, chips.read(REFERENCE_TIME_S))["accuracy"].mean())

    def _counts(self, trained: tuple[nn.Module, list[float]], unipolar: bool) -> tuple[int, int]:
        per = 1 if unipolar else 2
        adcs_per_output = 1 if unipolar else self.params.differential_adcs
        pop = self._population(unipolar)
        # a unipolar crossbar whose G_min is above 0 has a reference column per column of tiles (no ADC of its own)
        reference = pop.mapping.reference_column and pop.mapping.g_min(pop.device.g_max) > 0
        devices = adcs = 0
        params = dict(trained[0].named_parameters())
        for w in (params[n] for n in analog_weight_names(trained[0])):
            out, fan_in = w.shape[0], w[0].numel()
            devices += out * fan_in * per + (math.ceil(out / pop.tile.cols) * fan_in if reference else 0)
            adcs += out * adcs_per_output * math.ceil(fan_in / self.params.tile_rows)
        return devices, adcs

