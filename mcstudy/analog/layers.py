"""Linear and convolution layers evaluated for a whole block of chips in one batched op.

Activations flow through the network as ``(C·N, ...)`` tensors: chip-major, the ``N``
samples of chip 0 first. Digital layers (activations, pooling, flatten, batch norm in
eval mode, residual additions) work on that unchanged; analog layers view it as
``(C, N, ...)`` and multiply every chip's samples by that chip's own weights. The first
analog layer of a Sequential with only reshaping modules before it takes the ``(N, ...)``
inputs themselves and views them as ``(C, N, ...)`` with stride 0 (``shared_input``):
the same numbers without a copy per chip.

An analog layer's pipeline (``crossbar``): DAC on the inputs -> for each row of
crossbar tiles: the analog product (+ per-input-vector read noise and output noise)
-> ADC -> digital sum of the tiles -> neuron gain and offset (operating-point drift,
mismatch) -> digital output scale and shift (drift compensation, self-tuning, in-situ
trims) -> digital bias -> a ReLU that followed the layer in its Sequential (moved here
by ``AnalogNetwork``). Without autograd that digital stage is one compiled pass in place.

Everything here is differentiable (the converters' rounding passes gradients straight
through when a gradient is needed), so on-chip learning can back-propagate through a
chip's own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import McStudyError
from ..hardware.chip import LayerRead
from ..hardware.periphery import PeripherySpec, adc_tile, input_scale, quantise_input, quantise_symmetric

Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _vector_noise(read: LayerRead, tag: tuple[str | int, ...], k: int, like: torch.Tensor, sample_offset: int) -> torch.Tensor:
    """Standard normals for every output of every input vector, keyed by the tag (the input
    set, the kind of noise and the layer's call within one forward pass) and by the
    sample's index in the evaluated set (so batching does not change them)."""
    assert read.noise is not None
    c, n = like.shape[:2]
    per_sample = math.prod(like.shape[2:])
    z = read.noise.child(*tag, k).normal_range(sample_offset * per_sample, n * per_sample, dtype=like.dtype)
    return z.view(like.shape)


def crossbar(
    x: torch.Tensor,
    read: LayerRead,
    periphery: PeripherySpec,
    product: Product,
    rows: Callable[[torch.Tensor, slice], torch.Tensor],
    sample_offset: int = 0,
    purpose: str = "eval",
    call: int = 0,
) -> torch.Tensor:
    """Analog matrix product of inputs ``x`` ``(C, N, ...)`` with the read's weights,
    through DAC, tiles, per-vector noise and ADC; returns ``(C, N, out, *spatial)`` in
    weight × input units (before neuron gain/offset and bias). ``purpose`` names the
    input set and ``call`` counts the layer's calls within one forward pass (an LSTM's
    time steps, a layer applied twice), so different input sets and different calls at
    one read draw unrelated per-vector noise."""
    dac, adc = periphery.dac, periphery.adc
    feature_dims = tuple(range(2, x.dim()))
    scaled = dac.bits is not None or adc.bits is not None or periphery.output_noise > 0
    c = x.shape[0]
    shared = c > 1 and x.stride(0) == 0  # every chip's view of the same inputs: the DAC's work once
    xs = x[:1] if shared else x
    x_scale = input_scale(xs, dac, feature_dims) if scaled else 1.0
    if dac.bits is not None:
        xs = quantise_input(xs, x_scale, dac)
    if shared:
        x = xs.expand(c, *xs.shape[1:])
        if isinstance(x_scale, torch.Tensor):
            x_scale = x_scale.expand(c, *x_scale.shape[1:])
    else:
        x = xs
    per_tile = adc.bits is not None or periphery.output_noise > 0
    slices = read.row_slices if per_tile else [slice(0, read.weight.shape[2])]
    y: torch.Tensor | None = None
    for k, sl in enumerate(slices):
        xk = rows(x, sl) if len(slices) > 1 else x
        yk = product(xk, read.weight[:, :, sl])
        if read.var is not None:
            std = torch.sqrt(product(xk * xk, read.var[:, :, sl]).clamp(min=0))
            yk = yk + std * _vector_noise(read, (purpose, "read", call), k, yk, sample_offset)
        fused = adc_tile(yk, x_scale, read.w_max[k], adc) if per_tile and periphery.output_noise == 0 else None
        if fused is not None:
            yk = fused
        elif per_tile:
            # normalised units: a full-scale device driven by a full-scale input
            norm = _expand_scale(x_scale, yk) * read.w_max[k].view(1, 1, -1, *([1] * (yk.dim() - 3)))
            yn = yk / norm
            if periphery.output_noise > 0:
                yn = yn + periphery.output_noise * _vector_noise(read, (purpose, "out", call), k, yk, sample_offset)
            if adc.bits is not None:
                yn = quantise_symmetric(yn, adc.range, adc.bits)
            yk = yn * norm
        y = yk if y is None else y + yk
    assert y is not None
    return y


def _expand_scale(x_scale: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor | float:
    """Per-vector input scale ``(C, N, 1, ...)`` reshaped to broadcast over ``y``."""
    if not isinstance(x_scale, torch.Tensor):
        return x_scale
    return x_scale.reshape(*x_scale.shape[:2], *([1] * (y.dim() - 2)))


def linear_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(C, N, in) @ (C, out, in)^T -> (C, N, out)``, one GEMM per chip.

    A block of one chip runs as a batch of two (the chip twice, as stride-0 views): the
    BLAS computes a batch of one with another kernel, whose sums differ in the last bit for
    long rows (fan-in above ~700 on MKL), and a chip must get the same bits alone as in any
    block (``tests/test_analog.py``)."""
    if x.shape[0] == 1:
        return torch.bmm(x.expand(2, *x.shape[1:]), w.expand(2, *w.shape[1:]).transpose(1, 2))[:1]
    return torch.bmm(x, w.transpose(1, 2))


def linear_rows(x: torch.Tensor, sl: slice) -> torch.Tensor:
    return x[..., sl]


Calibrate = Callable[[int, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]]
"""``(layer index, analog output (C, N, out, *spatial)) -> (scale, shift)``, each ``(C, 1|out)`` or None."""


@dataclass
class LayerCall:
    """What one analog layer computes with during one ``AnalogNetwork.logits`` call: the
    chips' read of its devices, the periphery, the digital trims and how per-vector noise
    is keyed. Set for the call and dropped after it: a network never remembers a chip."""

    read: LayerRead
    periphery: PeripherySpec
    out_scale: torch.Tensor | None = None  # (C,) or (C, out) digital output scale
    out_shift: torch.Tensor | None = None  # (C,) or (C, out) digital output shift
    calibrate: Calibrate | None = None  # sets out_scale/out_shift from this call's output
    sample_offset: int = 0  # index of the first input in its set
    purpose: str = "eval"  # names the set (keys per-vector noise with sample_offset)
    shared_input: bool = False  # the input is (N, ...), the same on every chip
    calls: int = 0  # calls so far in this forward pass (keys per-vector noise: an LSTM's time steps)


class ChipLayer(nn.Module):
    """Base of the analog layers: a layer computes with the :class:`LayerCall` of the
    current ``AnalogNetwork.logits`` call."""

    granule = 1  # crossbar rows that must stay on one tile
    kind = "Linear"  # what the layer is, for the start-of-run listing

    def __init__(self, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.index = 0  # position among the network's analog layers
        # where the input keeps its samples (AnalogNetwork._find_batch_dims): their dimension (a
        # Linear on sequence-first tokens: 1; None: unknown) and rows per sample where they lead
        # a merged dimension ((N·L, E): L)
        self.batch_dim: int | None = 0
        self.rows_per_sample = 1
        self.relu = False  # a ReLU that followed this layer runs in its digital stage (AnalogNetwork)
        self.call: LayerCall | None = None

    def matrix_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def crossbars(self) -> list["ChipLayer"]:
        """The crossbars this module computes with: itself (a composite has several)."""
        return [self]

    def product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        raise NotImplementedError

    def feature_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape[1:])

    def split_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Inputs ``(C, N, ...)`` as the crossbar takes them, and the leading dimensions
        folded into ``N`` (none by default; see :class:`ChipLinear`)."""
        return x, ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self.call
        if call is None:
            raise RuntimeError("analog layer called without a deployed chip read (outside AnalogNetwork.logits)")
        read = call.read
        c = read.weight.shape[0]
        if call.shared_input:  # one copy of the inputs viewed by every chip (stride 0), not C copies
            x = x.unsqueeze(0).expand(c, *x.shape)
        else:
            if self.batch_dim is None:
                raise McStudyError(
                    f"analog layer {self.index} was not read when mcstudy ran the module on 3 samples to find where its "
                    "samples are (a branch that depends on the input values?)"
                )
            x = x.movedim(self.batch_dim, 0) if self.batch_dim else x
            x = x.reshape(c, -1, *self.feature_shape(x))
        x, lead = self.split_tokens(x)
        vectors = math.prod(lead) * self.rows_per_sample  # input vectors per sample (1 without leading dimensions)
        y = crossbar(x, read, call.periphery, self.product, self.rows, call.sample_offset * vectors, call.purpose, call.calls)
        call.calls += 1
        trims: list[tuple[bool, torch.Tensor]] = []  # (add?, (C, 1|out)): the digital stage, in order
        if read.neurons.gain is not None:
            trims.append((False, read.neurons.gain))
        if read.neurons.offset is not None:
            trims.append((True, read.neurons.offset))
        if call.calibrate is not None:
            y = _digital_stage(y, trims, False, keep=True)
            call.out_scale, call.out_shift = call.calibrate(self.index, y)
            trims = []
        if call.out_scale is not None:
            trims.append((False, call.out_scale.reshape(c, -1)))
        if call.out_shift is not None:
            trims.append((True, call.out_shift.reshape(c, -1)))
        if self.bias is not None:
            trims.append((True, self.bias.view(1, -1)))
        # without autograd the crossbar's fresh output is changed in place (same numbers, no
        # new (C, N, out) tensors); out of place for the backward pass, and when a calibration
        # hook has seen (and may keep) the output
        y = _digital_stage(y, trims, self.relu, keep=torch.is_grad_enabled() or call.calibrate is not None)
        if lead:
            y = y.reshape(-1, *lead, y.shape[-1])
            return y.movedim(0, self.batch_dim) if self.batch_dim else y
        return y.reshape(-1, *y.shape[2:])


def _digital_stage(y: torch.Tensor, trims: list[tuple[bool, torch.Tensor]], relu: bool, keep: bool) -> torch.Tensor:
    """``y`` ``(C, N, out, *spatial)`` through per-neuron trims (each ``(C | 1, 1 | out)``,
    multiplied or added in order), then ReLU where ``relu``. Without autograd on a
    contiguous float32 CPU tensor: one compiled pass in place (``kernels.neuron_epilogue``,
    the same bits); otherwise tensor operations, out of place where ``keep``."""
    c, n_out, extra = y.shape[0], y.shape[2], y.dim() - 3
    fused = not keep and y.device.type == "cpu" and y.dtype == torch.float32 and y.is_contiguous()
    if fused and all(v.dtype == torch.float32 and v.device.type == "cpu" for _, v in trims):
        from .. import kernels

        per_neuron = torch.stack([v.expand(c, n_out) for _, v in trims]) if trims else torch.zeros(0, c, n_out)
        ops = np.array([2 if add else 1 for add, _ in trims], dtype=np.int8)
        kernels.neuron_epilogue(y.view(c, y.shape[1], n_out, -1).numpy(), per_neuron.numpy(), ops, relu)
        return y
    mul, add = (torch.mul, torch.add) if keep else (torch.Tensor.mul_, torch.Tensor.add_)
    for is_add, v in trims:
        y = (add if is_add else mul)(y, _per_neuron(v, extra))
    if relu:
        y = torch.relu(y) if keep else y.relu_()
    return y


def _per_neuron(v: torch.Tensor, extra: int) -> torch.Tensor:
    """``(C, 1|out)`` -> broadcastable to ``(C, N, out, *spatial)``."""
    return v.reshape(v.shape[0], 1, v.shape[1], *([1] * extra))


class ChipLinear(ChipLayer):
    """A weight matrix ``(out, in)`` on a crossbar, applied to the last dimension of its
    input (an ``nn.Linear``, or one projection of an LSTM or an attention block)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str = "Linear") -> None:
        super().__init__(bias)
        self.out_features, self.in_features = weight.shape
        self.kind = kind

    def matrix_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear_product(x, w)

    def rows(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        return linear_rows(x, sl)

    def split_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """A Linear applied to ``(C, N, *lead, in)`` (tokens, time steps) runs every token
        through the crossbar as an input vector of its sample: ``(C, N·prod(lead), in)``."""
        if x.dim() <= 3:
            return x, ()
        return x.reshape(x.shape[0], -1, x.shape[-1]), tuple(x.shape[2:-1])


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
    """Grouped convolution: chip ``c``'s channels form group ``c``. The crossbar matrix is
    the unrolled kernel ``(out, in_channels·kh·kw)``; a row tile holds whole channels."""

    kind = "Conv2d"

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__(layer.bias)
        assert layer.groups == 1 and layer.padding_mode == "zeros"  # else digital (models.crossbars.why_digital)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.granule = self.kernel_size[0] * self.kernel_size[1]

    def matrix_shape(self) -> tuple[int, int]:
        return self.out_channels, self.in_channels * self.granule

    def rows(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        return x[:, :, sl.start // self.granule : sl.stop // self.granule]

    def product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c, n, cin, h, wd = x.shape
        xg = x.transpose(0, 1).reshape(n, c * cin, h, wd)
        kernel = w.reshape(c * self.out_channels, cin, *self.kernel_size)
        with _native_cpu_conv():
            y = F.conv2d(xg, kernel, None, self.stride, self.padding, self.dilation, groups=c)
        _, _, ho, wo = y.shape
        # chip-major, as every activation: the digital stage then runs in one pass and the
        # layer's (C·N, ...) output is a view (one copy here instead of strided passes there)
        return y.reshape(n, c, self.out_channels, ho, wo).transpose(0, 1).contiguous()


class ChipConv1d(ChipConv2d):
    """A 1-D convolution as the 2-D one on a ``(C, N, in, 1, L)`` view with ``1 × k``
    kernels: the crossbar matrix is ``(out, in·k)``, a row tile holds whole channels."""

    kind = "Conv1d"

    def __init__(self, layer: nn.Conv1d) -> None:
        as_2d = nn.Conv2d(
            layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]), (1, layer.stride[0]),
            layer.padding if isinstance(layer.padding, str) else (0, layer.padding[0]), (1, layer.dilation[0]),
            bias=False, device="meta",
        )  # fmt: skip
        super().__init__(as_2d)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    def product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return super().product(x.unsqueeze(3), w).squeeze(3)


class CompiledMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose evaluation (no autograd, CPU, float32, a batch of planes) runs
    as one compiled pass, ``kernels.max_pool_planes``: PyTorch's semantics and bits at
    several times its speed on the ``(C·N, channels, H, W)`` activations of a block of
    chips. Anything else (indices, ceil mode, gradients) goes to PyTorch."""

    @classmethod
    def like(cls, m: nn.MaxPool2d) -> "CompiledMaxPool2d":
        return cls(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = _pair(self.kernel_size), _pair(self.stride)
        (ph, pw), (dh, dw) = _pair(self.padding), _pair(self.dilation)
        plain = not (self.return_indices or self.ceil_mode or (torch.is_grad_enabled() and x.requires_grad))
        if not plain or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or 2 * ph > kh or 2 * pw > kw:
            return super().forward(x)
        n, ch, h, w = x.shape
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1 or min(kh, kw, sh, sw, dh, dw) < 1:
            return super().forward(x)  # PyTorch's error
        from .. import kernels

        xc = x.contiguous()
        out = torch.empty(n, ch, ho, wo)
        kernels.max_pool_planes(xc.view(n * ch, h, w).numpy(), kh, kw, sh, sw, ph, pw, dh, dw, out.view(n * ch, ho, wo).numpy())
        return out


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def weight_matrix(w: torch.Tensor) -> torch.Tensor:
    """A weight parameter as the crossbar matrix ``(out, fan_in)`` (a convolution's kernel unrolled)."""
    w = w.detach()
    return w.reshape(w.shape[0], -1)
