"""Small models for the embedded datasets: an MLP and a LeNet-5-style CNN."""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..registry import Params, Registry

ModelFactory = Callable[[Params, tuple[int, ...], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
Activation = Literal["relu", "tanh", "sigmoid"]


class MLPParams(Params):
    hidden: tuple[PositiveInt, ...] = Field((64, 32), description="hidden layer widths")
    activation: Activation = "relu"
    bias: bool = True


@MODELS.register("mlp", MLPParams)
def mlp(params: MLPParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Multi-layer perceptron on flattened inputs."""
    widths = [math.prod(input_shape), *params.hidden, n_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=params.bias))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[params.activation]())
    return nn.Sequential(*layers)


class LeNetParams(Params):
    channels: tuple[PositiveInt, PositiveInt] = Field((6, 16), description="feature maps of the two conv layers")
    hidden: tuple[PositiveInt, ...] = Field((120, 84), description="widths of the fully connected layers")
    kernel: PositiveInt = 5
    activation: Activation = "relu"


@MODELS.register("lenet", LeNetParams)
def lenet(params: LeNetParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """LeNet-5-style CNN: conv-pool-conv-pool-fc-fc-fc (LeCun et al. 1998).

    The first convolution is same-padded; the second is a valid convolution when the
    feature map is large enough (28x28 inputs give the classic 16x5x5) and same-padded
    otherwise (8x8 digits).
    """
    if len(input_shape) != 3:
        raise ValueError(f"lenet needs image inputs (C, H, W), got shape {input_shape}")
    c_in, h, _ = input_shape
    k = params.kernel
    act = _ACTIVATIONS[params.activation]
    c1, c2 = params.channels
    h1 = h // 2
    pad2 = 0 if h1 >= 2 * k else k // 2
    features = nn.Sequential(
        nn.Conv2d(c_in, c1, k, padding=k // 2), act(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, k, padding=pad2), act(), nn.MaxPool2d(2),
        nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        n_flat = features(torch.zeros(1, *input_shape)).shape[1]
    widths = [n_flat, *params.hidden, n_classes]
    head: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        head.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            head.append(act())
    return nn.Sequential(*features, *head)


class ResNetParams(Params):
    blocks: PositiveInt = Field(3, description="basic blocks per stage (3: ResNet-20, 5: ResNet-32)")
    width: PositiveInt = Field(16, description="channels of the first stage (doubles per stage)")


class _Shortcut(nn.Module):
    """He et al.'s option A: subsample and zero-pad channels (no weights, so nothing analog)."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and c_in == c_out else _Shortcut(stride, c_out - c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet20", ResNetParams)
def resnet20(params: ResNetParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """CIFAR-style ResNet (He et al., CVPR 2016): 6n+2 layers, 3 stages of n basic blocks
    (n = 3: ResNet-20), option-A shortcuts; batch norm and the residual additions are digital."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet20 needs image inputs (C, H, W), got shape {input_shape}")
    w = params.width
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    c_in = w
    for stage in range(3):
        c_out = w * 2**stage
        for b in range(params.blocks):
            layers.append(_BasicBlock(c_in, c_out, 2 if (b == 0 and stage > 0) else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes)]
    return nn.Sequential(*layers)
