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

import dataclasses
from dataclasses import dataclass

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import McStudyError
from ..hardware.chip import LayerRead
from ..hardware.periphery import PeripherySpec, adc_tile, input_scale, quantise_input, quantise_symmetric
from .invariant import conv2d, matmul, suspended

Product = Callable[[torch.Tensor, LayerRead, str, slice], torch.Tensor]
"""``(inputs of one row of tiles (C, N, rows, ...), the read, its matrix ("weight" or
"var"), the tile's rows) -> (C, N, out, ...)``: a crossbar's analog product."""


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
        yk = product(xk, read, "weight", sl)
        if read.var is not None:
            std = torch.sqrt(product(xk * xk, read, "var", sl).clamp(min=0))
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


def linear_product(x: torch.Tensor, read: LayerRead, matrix: str, sl: slice) -> torch.Tensor:
    """``(C, N, in) @ (C, out, in)[:, :, sl]^T -> (C, N, out)``: each output one fma chain
    over the inputs in order (``invariant.matmul``), so a chip gets the same bits alone as
    in any block, and a sample however its set is batched. The read keeps the transposed
    matrix it is given (``LayerRead.transposed``) for its other products."""
    return matmul(x, read.transposed(matrix)[:, sl])


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
    known: torch.Tensor | None = None  # (C | 1, out, in) the weights the chip's learning stage knows (see ChipLayer)


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

    def product(self, x: torch.Tensor, read: LayerRead, matrix: str, sl: slice) -> torch.Tensor:
        """The crossbar's analog product (:data:`Product`)."""
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
        # the layer's pipeline (converters, noise draws, fixed-order products, neuron stage)
        # is invariant by construction: its many small operations need no routing
        with suspended():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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
        trims: list[tuple[bool, torch.Tensor]] = []  # (add?, (C, 1|out)): the digital stage, in order
        if read.neurons.gain is not None:
            trims.append((False, read.neurons.gain))
        if read.neurons.offset is not None:
            trims.append((True, read.neurons.offset))
        known = call.known
        if known is not None and torch.is_grad_enabled() and (x.requires_grad or known.requires_grad):
            # on-chip learning: the value is the chip's, the gradient what the chip can know
            with torch.no_grad():
                measured = _digital_stage(self._crossbar(x, call, vectors), trims, False, keep=True)
            y = _surrogate(measured, self.product(x, dataclasses.replace(read, weight=known.expand(c, *known.shape[1:]), var=None), "weight", slice(None)))
            trims = []
        else:
            y = self._crossbar(x, call, vectors)
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

    def _crossbar(self, x: torch.Tensor, call: LayerCall, vectors: int) -> torch.Tensor:
        """The chips' analog output for inputs ``x`` ``(C, N, ...)`` (``crossbar``), counting the call."""
        y = crossbar(x, call.read, call.periphery, self.product, self.rows, call.sample_offset * vectors, call.purpose, call.calls)
        call.calls += 1
        return y


def _surrogate(measured: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """``measured``'s values with ``model``'s gradient: ``measured + (model − model)``, whose
    added term is exactly 0 in the forward pass. On-chip learning (Jia et al., DAC 2018)
    back-propagates through what a chip can know — its layers' measured outputs, the
    weights it stored, its digital trims — not through its own unknown mismatch, noise,
    drift or converters: a layer's error reaches its inputs and its weights through the
    stored weights' product (``model``), while the forward pass is the chip's."""
    return measured + (model - model.detach())


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

    def product(self, x: torch.Tensor, read: LayerRead, matrix: str, sl: slice) -> torch.Tensor:
        return linear_product(x, read, matrix, sl)

    def rows(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        return linear_rows(x, sl)

    def split_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """A Linear applied to ``(C, N, *lead, in)`` (tokens, time steps) runs every token
        through the crossbar as an input vector of its sample: ``(C, N·prod(lead), in)``."""
        if x.dim() <= 3:
            return x, ()
        return x.reshape(x.shape[0], -1, x.shape[-1]), tuple(x.shape[2:-1])


class ChipConv2d(ChipLayer):
    """Grouped convolution: chip ``c``'s channels form group ``c``. The crossbar matrix is
    the unrolled kernel ``(out, in_channels·kh·kw)``; a row tile holds whole channels."""

    kind = "Conv2d"

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__(layer.bias)
        assert layer.groups == 1 and layer.padding_mode == "zeros"  # else digital (models.crossbars.why_digital)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = _pair(layer.kernel_size)
        self.stride, self.padding, self.dilation = _pair(layer.stride), layer.padding, _pair(layer.dilation)
        self.granule = self.kernel_size[0] * self.kernel_size[1]
        self._pads = _padding(layer.padding, self.kernel_size, self.dilation)

    def matrix_shape(self) -> tuple[int, int]:
        return self.out_channels, self.in_channels * self.granule

    def rows(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        return x[:, :, sl.start // self.granule : sl.stop // self.granule]

    def product(self, x: torch.Tensor, read: LayerRead, matrix: str, sl: slice) -> torch.Tensor:
        """Every chip's convolution ``(C, N, in, H, W)`` with its unrolled kernels ``(C, out,
        in·kh·kw)`` (columns ``sl``) -> ``(C, N, out, Ho, Wo)``, chip-major as every
        activation; each output one fma chain over the kernel in order (``invariant.conv2d``)."""
        top, bottom, left, right = self._pads
        if bottom != top or right != left:  # 'same' with an even kernel: the extra row or column at the end, as torch
            x = F.pad(x, (0, right - left, 0, bottom - top))
        return conv2d(x, getattr(read, matrix)[:, :, sl], self.kernel_size, self.stride, (top, left), self.dilation)


def _padding(padding: str | int | tuple[int, ...], kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """A convolution's padding as (top, bottom, left, right) zeros: torch's ``'same'`` puts
    the odd one of ``dilation·(k − 1)`` after the input."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        (th, tw) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = _pair(padding)  # type: ignore[arg-type]
    return ph, ph, pw, pw


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

    def product(self, x: torch.Tensor, read: LayerRead, matrix: str, sl: slice) -> torch.Tensor:
        return super().product(x.unsqueeze(3), read, matrix, sl).squeeze(3)


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
