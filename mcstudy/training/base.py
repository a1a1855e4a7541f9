"""The training loop every trainer shares, and the trainer registry.

A trainer is a small class that may transform the crossbar weights used in each forward
pass (``weights``: quantise, inject noise, apply a hardware transfer function), transform
the inputs of every crossbar layer (``activation``: quantise), constrain the weights after
each optimiser step (``after_step``), finish the trained model (``finish``) and say which
weight range it trained each layer with (``ranges``: the weight that maps to full
conductance, which deployment then uses); the loop, optimiser, schedule and seeding are
common, so trainers differ only in what they are about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field, PositiveInt
from torch.func import functional_call

from ..data import Dataset, holds_values
from ..hardware.periphery import DACSpec
from ..errors import McStudyError
from ..models import build_model
from ..models.crossbars import analog_modules, analog_weight_names
from ..objectives import CrossEntropy, Loss
from ..registry import NoParams, Params
from ..registries import TRAINERS  # noqa: F401  (re-exported where it always was)

if TYPE_CHECKING:
    from ..analog import AnalogNetwork


class TrainParams(Params):
    """Parameters common to every trainer."""

    epochs: PositiveInt = Field(30, description="passes over the training split")
    batch_size: PositiveInt = Field(64, description="training samples per step")
    lr: float = Field(3e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Adam, or SGD with momentum")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay of the optimiser")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="learning-rate schedule over all steps: constant, or cosine decay to 0")
    init: str | None = Field(None, description="start from this checkpoint (a state dict .pt, relative to the study file) instead of random weights")
    init_sha256: str | None = Field(None, description="the init checkpoint's SHA-256: filled in when the study is read, or set it to pin the file")

    def resolve(self, base_dir: Path | None) -> TrainParams:
        if self.init is None:
            return self
        from .checkpoint import resolve_checkpoint

        path, digest = resolve_checkpoint(self.init, self.init_sha256, base_dir, "init")
        return self.model_copy(update={"init": path, "init_sha256": digest})


def init_model(model: str, model_params: Params, data: Dataset, seed: int) -> nn.Module:
    """A freshly initialised model; its initial weights depend on ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model, model_params, data.input_shape, data.n_classes)


def _check_outputs(net: nn.Module, data: Dataset) -> None:
    """The network gives one output per class (or regression target) for every sample."""
    was_training = net.training
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(data.x_train[:1]))
    net.train(was_training)
    want = data.n_classes
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != want:
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "regression target(s)" if holds_values(data.y_train) else "classes"
        raise McStudyError(f"the network gives outputs of shape {got} per sample; the data has {want} {what}: it must give ({want},)")


@dataclass
class TrainOutcome:
    """A trained model, its architecture's parameters, the loss per epoch, and a report
    (e.g. the candidates of a search) to show the user."""

    model: nn.Module
    model_params: Params
    history: list[float]
    report: list[dict[str, Any]] = field(default_factory=list)
    ranges: dict[str, float] | None = None  # analog weight name -> the full-scale weight the trainer used


class Trainer:
    """Standard float training (the study's loss, by default cross-entropy; Adam or SGD)."""

    def __init__(self, params: TrainParams) -> None:
        self.params = params
        self.loss: Loss = CrossEntropy(NoParams())  # the study's loss (set by the training job)

    needs_classes = False  # chooses by class accuracy: a classification study only

    def start(self, model: str, model_params: Params, data: Dataset, seed: int) -> nn.Module:
        """The model training starts from: initial weights from ``seed``, or the ``init``
        checkpoint where the variant names one."""
        net = init_model(model, model_params, data, seed)
        init = getattr(self.params, "init", None)
        if init is not None:
            from .checkpoint import load_into

            load_into(net, init, getattr(self.params, "init_sha256", None))
        _check_outputs(net, data)
        return net

    def run(self, model: str, model_params: Params, data: Dataset, seed: int) -> TrainOutcome:
        """Build the model (:meth:`start`) and train it. A trainer that searches
        architectures overrides this."""
        net = self.start(model, model_params, data, seed)
        history = self.fit(net, data, seed)
        return TrainOutcome(net, model_params, history, ranges=self.ranges(net))

    @classmethod
    def has_ranges(cls) -> bool:
        """Whether this trainer trains with a weight range per layer (see :meth:`ranges`)."""
        return cls.ranges is not Trainer.ranges

    def ranges(self, model: nn.Module) -> dict[str, float] | None:
        """The full-scale weight of every analog layer of the finished ``model`` — the
        weight the trainer's own forward pass mapped to full conductance — by parameter
        name; None for a trainer without one (float training)."""
        return None

    def weights(self, ws: dict[str, torch.Tensor], gen: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        """The crossbar weights the forward pass uses (default: themselves). ``progress``
        runs from 0 to 1 over training (for annealed surrogates)."""
        return ws

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The input a crossbar layer sees (default: itself)."""
        return x

    def uses_activation(self) -> bool:
        return type(self).activation is not Trainer.activation

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        """Constrain the weights after an optimiser step (default: nothing)."""

    @torch.no_grad()
    def finish(self, model: nn.Module, names: list[str]) -> None:
        """Turn the trained model into the one to deploy (default: as trained)."""

    def reference(self, ws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The crossbar weights the finished network computes with in this trainer's own
        forward pass, from the stored ones ``ws`` — without the noise a trainer samples,
        which the chips supply (default: the stored weights)."""
        return ws

    def reference_dac(self) -> DACSpec:
        """The converter this trainer's forward pass puts every crossbar's inputs through
        (default: none, exact inputs)."""
        return DACSpec()

    def set_reference(self, net: "AnalogNetwork") -> None:
        """Make ``net``'s digital reference (``AnalogNetwork.nominal_read``) what this
        trainer's forward pass computes: its weights and its activation quantisation."""
        net.set_reference(self.reference(net.stored_weights()), self.reference_dac())

    def fit(self, model: nn.Module, data: Dataset, seed: int) -> list[float]:
        """Train ``model`` in place; returns the mean training loss of each epoch."""
        p = self.params
        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(data.x_train)
        y = torch.from_numpy(data.y_train)
        names = analog_weight_names(model)
        if p.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        steps_per_epoch = math.ceil(len(y) / p.batch_size)
        total = p.epochs * steps_per_epoch
        sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            if p.schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        )
        history: list[float] = []
        hooks = []
        if self.uses_activation():
            for name, m in analog_modules(model):
                if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):  # its crossbars' inputs are inside its forward
                    raise McStudyError(
                        f"quantised activations in training reach the inputs of Linear and convolution layers only; "
                        f"{name} is a torch {type(m).__name__}, whose crossbars take their inputs inside its forward (set the trainer's activation_bits to null, or build it from nn.Linear)"
                    )
                hooks.append(m.register_forward_pre_hook(lambda _m, args: (self.activation(args[0]), *args[1:])))
        model.train()
        step = 0
        for _ in range(p.epochs):
            order = torch.randperm(len(y), generator=gen)
            losses = []
            for a in range(0, len(y), p.batch_size):
                idx = order[a : a + p.batch_size]
                params = dict(model.named_parameters())
                used = {**params, **self.weights({n: params[n] for n in names}, gen, step / max(total - 1, 1))}
                loss = self.loss.mean(functional_call(model, used, (x[idx],)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.after_step(model, names)
                losses.append(loss.item())
                step += 1
            history.append(float(np.mean(losses)))
        for h in hooks:
            h.remove()
        model.eval()
        self.finish(model, names)
        return history


TRAINERS.register("standard", TrainParams)(Trainer)


class PretrainedParams(Params):
    checkpoint: str = Field(description="the trained weights: a state dict .pt (relative to the study file)")
    sha256: str | None = Field(None, description="the checkpoint's SHA-256: filled in when the study is read, or set it to pin the file")

    def resolve(self, base_dir: Path | None) -> PretrainedParams:
        from .checkpoint import resolve_checkpoint

        path, digest = resolve_checkpoint(self.checkpoint, self.sha256, base_dir, "checkpoint")
        return self.model_copy(update={"checkpoint": path, "sha256": digest})


@TRAINERS.register("pretrained", PretrainedParams)
class Pretrained(Trainer):
    """Your trained weights, deployed as they are (no training)."""

    params: PretrainedParams  # type: ignore[assignment]

    def run(self, model: str, model_params: Params, data: Dataset, seed: int) -> TrainOutcome:
        from .checkpoint import load_into

        net = init_model(model, model_params, data, seed)
        load_into(net, self.params.checkpoint, self.params.sha256)
        net.eval()
        return TrainOutcome(net, model_params, [])
