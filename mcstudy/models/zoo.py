"""Small models for the embedded datasets: an MLP, a LeNet-5-style CNN (2-D images or
1-D sequences), a CIFAR-style ResNet, an LSTM and a small transformer encoder."""

from __future__ import annotations

import math
from typing import Annotated, Callable, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..registry import Params
from ..registries import MODELS  # noqa: F401  (re-exported where it always was)

ModelFactory = Callable[[Params, tuple[int, ...], int], nn.Module]
MAX_WIDTH = 16384  # units or channels of a layer: a typo (100000) would ask for tens of gigabytes

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
Activation = Literal["relu", "tanh", "sigmoid"]


class MLPParams(Params):
    hidden: tuple[Annotated[int, Field(gt=0, le=MAX_WIDTH)], ...] = Field((64, 32), max_length=64, description="hidden layer widths")
    activation: Activation = Field("relu", description="nonlinearity after every hidden layer")
    bias: bool = Field(True, description="layers have a bias (digital, added after the crossbar)")


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
    channels: tuple[Annotated[int, Field(gt=0, le=MAX_WIDTH)], Annotated[int, Field(gt=0, le=MAX_WIDTH)]] = Field((6, 16), description="feature maps of the two conv layers")
    hidden: tuple[Annotated[int, Field(gt=0, le=MAX_WIDTH)], ...] = Field((120, 84), max_length=64, description="widths of the fully connected layers")
    kernel: PositiveInt = Field(5, le=64, description="convolution kernel length")
    activation: Activation = Field("relu", description="nonlinearity after every hidden layer")


@MODELS.register("lenet", LeNetParams)
def lenet(params: LeNetParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """LeNet-5-style CNN: conv-pool-conv-pool-fc-fc-fc (LeCun et al. 1998).

    The first convolution is same-padded; the second is a valid convolution when the
    feature map is large enough (28x28 inputs give the classic 16x5x5) and same-padded
    otherwise (8x8 digits). Sequences ``(C, L)`` (MNIST-1D) get the same network with
    1 × k kernels and 1 × 2 pooling (Conv2d on a ``(C, 1, L)`` view, so it deploys on
    the same analog convolution).
    """
    if len(input_shape) not in (2, 3):
        raise ValueError(f"lenet needs image (C, H, W) or sequence (C, L) inputs, got shape {input_shape}")
    k = params.kernel
    act = _ACTIVATIONS[params.activation]
    c1, c2 = params.channels
    if len(input_shape) == 3:
        c_in, h, _ = input_shape
        pad2 = 0 if h // 2 >= 2 * k else k // 2
        front: list[nn.Module] = []
        kernel, pad1, pool = (k, k), (k // 2, k // 2), (2, 2)
        pad2_ = (pad2, pad2)
    else:
        c_in, length = input_shape
        pad2 = 0 if length // 2 >= 2 * k else k // 2
        front = [nn.Unflatten(1, (c_in, 1))]
        kernel, pad1, pool = (1, k), (0, k // 2), (1, 2)
        pad2_ = (0, pad2)
    features = nn.Sequential(
        *front,
        nn.Conv2d(c_in, c1, kernel, padding=pad1), act(), nn.MaxPool2d(pool),
        nn.Conv2d(c1, c2, kernel, padding=pad2_), act(), nn.MaxPool2d(pool),
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
    blocks: PositiveInt = Field(3, le=64, description="basic blocks per stage (3: ResNet-20, 5: ResNet-32)")
    width: PositiveInt = Field(16, le=1024, description="channels of the first stage (doubles per stage)")


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


class LSTMParams(Params):
    hidden: PositiveInt = Field(32, le=MAX_WIDTH, description="hidden units per LSTM layer")
    layers: PositiveInt = Field(1, le=64, description="stacked LSTM layers")
    step: PositiveInt = Field(4, description="input values per time step: the sequence is read in chunks of this many")


class LSTMClassifier(nn.Module):
    """An LSTM (Hochreiter & Schmidhuber 1997) built from ``nn.Linear`` gate matrices, so
    each layer's input-to-gates and hidden-to-gates matrices are crossbars on a chip; the
    gate nonlinearities and the cell state are digital. The last hidden state feeds a
    linear classifier. Inputs ``(N, C, L)`` or ``(N, L)`` are read as ``L·C / step`` steps."""

    def __init__(self, n_in: int, params: LSTMParams, n_classes: int) -> None:
        super().__init__()
        if n_in % params.step:
            raise ValueError(f"lstm step {params.step} does not divide the input length {n_in}")
        self.step, self.hidden = params.step, params.hidden
        h = params.hidden
        self.ih = nn.ModuleList(nn.Linear(params.step if i == 0 else h, 4 * h) for i in range(params.layers))
        self.hh = nn.ModuleList(nn.Linear(h, 4 * h, bias=False) for _ in range(params.layers))
        self.head = nn.Linear(h, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(x.shape[0], -1, self.step)
        n = seq.shape[0]
        hs = [seq.new_zeros(n, self.hidden) for _ in self.ih]
        cs = [seq.new_zeros(n, self.hidden) for _ in self.ih]
        for t in range(seq.shape[1]):
            inp = seq[:, t]
            for i, (ih, hh) in enumerate(zip(self.ih, self.hh)):
                gi, gf, gg, go = (ih(inp) + hh(hs[i])).chunk(4, dim=1)
                cs[i] = torch.sigmoid(gf) * cs[i] + torch.sigmoid(gi) * torch.tanh(gg)
                hs[i] = torch.sigmoid(go) * torch.tanh(cs[i])
                inp = hs[i]
        return self.head(hs[-1])


@MODELS.register("lstm", LSTMParams)
def lstm(params: LSTMParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """A small LSTM classifier for sequences (MNIST-1D)."""
    return LSTMClassifier(math.prod(input_shape), params, n_classes)


class TransformerParams(Params):
    dim: PositiveInt = Field(32, le=MAX_WIDTH, description="token embedding width")
    heads: PositiveInt = Field(4, le=256, description="attention heads per block (must divide dim)")
    blocks: PositiveInt = Field(2, le=64, description="encoder blocks")
    mlp: PositiveInt = Field(64, le=MAX_WIDTH, description="hidden width of each block's feed-forward network")
    patch: PositiveInt = Field(4, description="input positions per token: the sequence is read in patches of this many (all channels)")


class _EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block (Vaswani et al. 2017; pre-norm as in ViT,
    Dosovitskiy et al. 2021): ``x + attention(LN(x))``, then ``x + W₂ GELU(W₁ LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class TransformerClassifier(nn.Module):
    """A small encoder-only transformer for sequences and images: the input ``(C, L)`` (or
    ``(C, H, W)``, read row by row) is cut into tokens of ``patch`` positions × all
    channels, embedded by a Linear, given a learned position embedding, passed through
    pre-norm encoder blocks (multi-head self-attention, layer norm, GELU feed-forward),
    averaged over tokens, normalised and classified by a Linear. On a chip: the patch
    embedding, every attention's q·k·v and output projections, the feed-forward layers and
    the classifier; attention scores, softmax, layer norms and GELU are digital."""

    def __init__(self, input_shape: tuple[int, ...], params: TransformerParams, n_classes: int) -> None:
        super().__init__()
        channels, positions = input_shape[0], math.prod(input_shape[1:])
        if positions % params.patch:
            raise ValueError(f"transformer patch {params.patch} does not divide the input length {positions}")
        if params.dim % params.heads:
            raise ValueError(f"transformer heads {params.heads} do not divide dim {params.dim}")
        self.patch, self.tokens = params.patch, positions // params.patch
        self.embed = nn.Linear(channels * params.patch, params.dim)
        self.position = nn.Parameter(torch.randn(self.tokens, params.dim) * 0.02)
        self.blocks = nn.Sequential(*(_EncoderBlock(params.dim, params.heads, params.mlp) for _ in range(params.blocks)))
        self.norm = nn.LayerNorm(params.dim)
        self.head = nn.Linear(params.dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        tokens = x.reshape(n, c, self.tokens, self.patch).permute(0, 2, 1, 3).reshape(n, self.tokens, c * self.patch)
        h = self.blocks(self.embed(tokens) + self.position)
        return self.head(self.norm(h.mean(1)))


@MODELS.register("transformer", TransformerParams)
def transformer(params: TransformerParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """A small transformer encoder classifier (multi-head attention, layer norm, GELU)."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f"transformer needs sequence (C, L) or image (C, H, W) inputs, got shape {input_shape}")
    return TransformerClassifier(input_shape, params, n_classes)
