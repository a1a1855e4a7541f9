"""Uniform scaling and unipolar weight matrices (García-Redondo et al., arXiv 1910.13850).

Every layer shares one weight range and one activation range (``ranges: shared``,
``activation_mode: fixed``), so one analog block design serves every layer. With
``sign: layer`` every weight matrix is constrained to one sign, so each weight needs a
single device (a unipolar crossbar) instead of a differential pair. The trainer searches
layer widths and per-layer polarities: each candidate is trained (quantisation-aware,
sign-projected after every step) and scored under a device model on the *calibration*
split — never the test split — and the best candidate is the variant. Every candidate's
accuracy, device count and ADC count are reported.

Counting: devices = Σ weights × devices per weight (1 unipolar, 2 differential); ADCs =
Σ crossbar columns, one ADC per column: out × devices per weight × row tiles (of
``tile_rows`` inputs), the differential pair's two columns digitised separately.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..analog import AnalogNetwork
from ..data import Dataset
from ..hardware import DEVICES, MAPPINGS, PeripherySpec, Population, Variation
from ..hardware.periphery import DACSpec
from ..registry import Params
from ..rng import chip_stream
from .base import TRAINERS, TrainOutcome, analog_weight_names, init_model
from .quantized import QATParams, QuantizationAware


class UniformUnipolarParams(QATParams):
    ranges: Literal["per_layer", "shared"] = "shared"
    activation_mode: Literal["per_vector", "fixed"] = "fixed"
    sign: Literal["none", "layer"] = Field("layer", description="one sign per weight matrix, or unconstrained (differential)")
    widths: tuple[tuple[PositiveInt, ...], ...] = Field((), description="hidden widths to search (empty: the study's model)")
    max_candidates: PositiveInt = Field(16, description="stop enumerating polarity patterns beyond this many candidates")
    score_device: Literal["ideal", "pcm", "rram", "sram"] = "ideal"
    score_sigma: float = Field(0.0, ge=0, description="within-chip lognormal σ of the scoring chips")
    score_chips: PositiveInt = 8
    tile_rows: PositiveInt = 256


@TRAINERS.register("uniform_unipolar", UniformUnipolarParams)
class UniformUnipolar(QuantizationAware):
    """Shared weight and activation ranges, single-sign matrices, and a search over widths and polarities."""

    params: UniformUnipolarParams
    signs: tuple[int, ...] = ()

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        for name, s in zip(names, self.signs):
            params[name].clamp_(min=0) if s > 0 else params[name].clamp_(max=0)

    def run(self, model: str, model_params: Params, data: Dataset, seed: int) -> TrainOutcome:
        p = self.params
        archs = [model_params] if not p.widths else [model_params.model_copy(update={"hidden": w}) for w in p.widths]
        best: tuple[float, int, Any] | None = None
        report: list[dict[str, Any]] = []
        for arch in archs:
            net = init_model(model, arch, data, seed)
            n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.modules())
            patterns = [()] if p.sign == "none" else list(itertools.product((1, -1), repeat=n_layers))
            for signs in patterns[: p.max_candidates]:
                trained = self._candidate(model, arch, data, seed, tuple(signs))
                accuracy = self._score(trained, data, unipolar=bool(signs))
                devices, adcs = self._counts(trained, unipolar=bool(signs))
                row = {"hidden": "-".join(map(str, getattr(arch, "hidden", ()))) or "-",
                       "polarity": "".join("+" if s > 0 else "-" for s in signs) or "differential",
                       "calibration_accuracy": accuracy, "devices": devices, "adcs": adcs}  # fmt: skip
                report.append(row)
                key = (accuracy, -devices)
                if best is None or key > best[:2]:
                    best = (accuracy, -devices, (trained, arch))
        assert best is not None
        trained, arch = best[2]
        return TrainOutcome(trained[0], arch, trained[1], report)

    def _candidate(self, model: str, arch: Params, data: Dataset, seed: int, signs: tuple[int, ...]) -> tuple[nn.Module, list[float]]:
        net = init_model(model, arch, data, seed)
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
        return Population(
            device.obj(device.params()),
            mapping.obj(mapping.params(bits=p.bits)),
            Variation.model_validate({"within": {"sigma": p.score_sigma}}),
            periphery=PeripherySpec(dac=DACSpec(bits=p.activation_bits, range=p.activation_range, mode=p.activation_mode)),
        )

    def _score(self, trained: tuple[nn.Module, list[float]], data: Dataset, unipolar: bool) -> float:
        net = AnalogNetwork(trained[0])
        chips = self._population(unipolar).program(net.nominal, chip_stream(0, "uniform_unipolar.score", range(self.params.score_chips)), net.granules)
        x, y = torch.from_numpy(data.x_cal), torch.from_numpy(data.y_cal)
        return float(net.score(x, y, chips.read(20.0))["accuracy"].mean())

    def _counts(self, trained: tuple[nn.Module, list[float]], unipolar: bool) -> tuple[int, int]:
        per = 1 if unipolar else 2
        devices = adcs = 0
        params = dict(trained[0].named_parameters())
        for w in (params[n] for n in analog_weight_names(trained[0])):
            out, fan_in = w.shape[0], w[0].numel()
            devices += out * fan_in * per
            adcs += out * per * math.ceil(fan_in / self.params.tile_rows)
        return devices, adcs

