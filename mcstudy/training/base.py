"""The training loop every trainer shares, and the trainer registry.

A trainer is a small class that may perturb the weights used in each forward pass
(``perturb``) and constrain them after each optimiser step (``after_step``); the loop,
optimiser, schedule and seeding are common, so trainers differ only in what they are
about.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch.func import functional_call

from ..data import Dataset
from ..registry import Params, Registry


class TrainParams(Params):
    """Parameters common to every trainer."""

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    lr: float = Field(3e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"


def analog_weight_names(model: nn.Module) -> list[str]:
    """Names of the parameters that live on crossbars: Linear and Conv2d weights."""
    return [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


class Trainer:
    """Standard float training (cross-entropy, Adam or SGD)."""

    def __init__(self, params: TrainParams) -> None:
        self.params = params

    def perturb(self, name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The weight the forward pass uses for crossbar weight ``name`` (default: itself)."""
        return w

    @torch.no_grad()
    def after_step(self, model: nn.Module, names: list[str]) -> None:
        """Constrain the weights after an optimiser step (default: nothing)."""

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
        model.train()
        for _ in range(p.epochs):
            order = torch.randperm(len(y), generator=gen)
            losses = []
            for a in range(0, len(y), p.batch_size):
                idx = order[a : a + p.batch_size]
                params = dict(model.named_parameters())
                used = {n: (self.perturb(n, w, gen) if n in names else w) for n, w in params.items()}
                loss = F.cross_entropy(functional_call(model, used, (x[idx],)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.after_step(model, names)
                losses.append(loss.item())
            history.append(float(np.mean(losses)))
        model.eval()
        return history


TRAINERS: Registry[type[Trainer]] = Registry("trainer")
TRAINERS.register("standard", TrainParams)(Trainer)
