"""A trained model deployed on a block of chips."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChipLayer, to_chip_layer, weight_matrix


class AnalogNetwork:
    """A copy of a trained model whose Linear/Conv2d layers run on chips.

    ``forward(x, weights)`` evaluates inputs ``x`` (N, ...) on every chip whose realised
    weight matrices are ``weights`` (one ``(C, out, in)`` tensor per analog layer, in
    model order) and returns logits ``(C, N, classes)``. The weights are an argument,
    not state: the network never remembers a chip between calls.
    """

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.nominal: list[torch.Tensor] = []
        self.layers: list[ChipLayer] = []
        self._swap(self.module)

    def _swap(self, parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            chip_layer = to_chip_layer(child)
            if chip_layer is None:
                self._swap(child)
                continue
            self.nominal.append(weight_matrix(child).clone())
            self.layers.append(chip_layer)
            setattr(parent, name, chip_layer)

    def to(self, device: torch.device | str) -> "AnalogNetwork":
        self.module.to(device)
        self.nominal = [w.to(device) for w in self.nominal]
        return self

    @contextmanager
    def deployed(
        self, weights: list[torch.Tensor], out_scales: list[torch.Tensor | None] | None = None
    ) -> Iterator[int]:
        """Within the block, the analog layers compute with ``weights``; yields the chip count."""
        if len(weights) != len(self.layers):
            raise ValueError(f"{len(weights)} weight tensors for {len(self.layers)} analog layers")
        scales = out_scales or [None] * len(self.layers)
        try:
            for layer, w, s in zip(self.layers, weights, scales):
                layer.weight, layer.out_scale = w, s
            yield int(weights[0].shape[0])
        finally:
            for layer in self.layers:
                layer.weight = layer.out_scale = None

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, weights: list[torch.Tensor], out_scales: list[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        with self.deployed(weights, out_scales) as c:
            n = x.shape[0]
            xc = x.unsqueeze(0).expand(c, *x.shape).reshape(c * n, *x.shape[1:])
            out = self.module(xc)
        return out.reshape(c, n, *out.shape[1:])

    @torch.no_grad()
    def layer_outputs(self, x: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw analog outputs of every analog layer (before scaling and bias) for inputs
        that are fed directly to each layer: ``x[i]`` is ``(K, fan_in)`` shared by all chips.
        Used for readouts (drift compensation) without running the network."""
        return [torch.matmul(xi, w.transpose(1, 2)) for xi, w in zip(x, weights)]

    @torch.no_grad()
    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: list[torch.Tensor],
        out_scales: list[torch.Tensor | None] | None = None,
        batch: int = 1024,
    ) -> dict[str, torch.Tensor]:
        """Per-chip accuracy and mean cross-entropy loss over ``(x, y)``, float64 ``(C,)``."""
        correct: torch.Tensor | float = 0.0
        loss: torch.Tensor | float = 0.0
        for a in range(0, x.shape[0], batch):
            logits = self.forward(x[a : a + batch], weights, out_scales)
            yb = y[a : a + batch]
            c, n, k = logits.shape
            correct = correct + (logits.argmax(-1) == yb).sum(1, dtype=torch.float64)
            ce = F.cross_entropy(logits.reshape(c * n, k), yb.repeat(c), reduction="none")
            loss = loss + ce.reshape(c, n).to(torch.float64).sum(1)
        total = float(x.shape[0])
        return {"accuracy": correct / total, "loss": loss / total}  # type: ignore[operator]
