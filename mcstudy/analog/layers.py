"""Linear and convolution layers evaluated for a whole block of chips in one batched op.

Activations flow through the network as ``(C·N, ...)`` tensors: chip-major, the ``N``
samples of chip 0 first. Digital layers (activations, pooling, flatten, batch norm in
eval mode, residual additions) work on that unchanged; analog layers view it as
``(C, N, ...)`` and multiply every chip's sample block by that chip's own weights.
The bias is digital (added exactly after the analog product), as in aihwkit's default.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class ChipLayer(nn.Module):
    """Base of the analog layers: holds the per-chip weights of the current call."""

    def __init__(self, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.weight: torch.Tensor | None = None  # (C, out, fan_in), set for one forward
        self.out_scale: torch.Tensor | None = None  # (C,) or (C, out) digital output scale

    def matrix_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def _scale(self, y: torch.Tensor, n_extra: int) -> torch.Tensor:
        """Multiply a ``(C, N, out, *spatial)`` result by the per-chip output scale."""
        if self.out_scale is None:
            return y
        s = self.out_scale
        s = s.view(s.shape[0], 1, -1, *([1] * n_extra)) if s.dim() == 2 else s.view(-1, 1, 1, *([1] * n_extra))
        return y * s

    def _weight(self) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("analog layer called without deployed weights")
        return self.weight


class ChipLinear(ChipLayer):
    def __init__(self, layer: nn.Linear) -> None:
        super().__init__(layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def matrix_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weight()
        c = w.shape[0]
        y = torch.bmm(x.reshape(c, -1, self.in_features), w.transpose(1, 2))
        y = self._scale(y, 0)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(-1, self.out_features)


@contextmanager
def _native_cpu_conv() -> Iterator[None]:
    """Use PyTorch's native CPU convolution instead of oneDNN's.

    oneDNN computes a grouped convolution with a different summation order than a
    single-group one, so a chip's result would depend on how many chips share its
    block; the native kernel computes every group exactly as a lone convolution
    (``tests/test_analog.py``), and on small kernels it is also faster.
    """
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class ChipConv2d(ChipLayer):
    """Grouped convolution: chip ``c``'s channels form group ``c``."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__(layer.bias)
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise NotImplementedError("analog Conv2d supports groups=1 and zero padding")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation

    def matrix_shape(self) -> tuple[int, int]:
        kh, kw = self.kernel_size
        return self.out_channels, self.in_channels * kh * kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weight()
        c = w.shape[0]
        _, cin, h, wd = x.shape
        xg = x.reshape(c, -1, cin, h, wd).transpose(0, 1).reshape(-1, c * cin, h, wd)
        kernel = w.reshape(c * self.out_channels, self.in_channels, *self.kernel_size)
        with _native_cpu_conv():
            y = F.conv2d(xg, kernel, None, self.stride, self.padding, self.dilation, groups=c)
        n, _, ho, wo = y.shape
        y = y.reshape(n, c, self.out_channels, ho, wo).transpose(0, 1)  # (C, N, out, H, W)
        y = self._scale(y, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, 1, -1, 1, 1)
        return y.reshape(-1, self.out_channels, ho, wo)


def to_chip_layer(layer: nn.Module) -> ChipLayer | None:
    """The analog counterpart of a torch layer, or None for a digital layer."""
    if isinstance(layer, nn.Linear):
        return ChipLinear(layer)
    if isinstance(layer, nn.Conv2d):
        return ChipConv2d(layer)
    return None


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """A Linear's or Conv2d's weight as the crossbar matrix ``(out, fan_in)``."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1)
