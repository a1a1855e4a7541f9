"""A trained model deployed on a block of chips."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hardware.chip import ChipRead, LayerRead
from ..models import build_model
from ..registry import Params
from ..hardware.periphery import NeuronDraws, PeripherySpec
from ..errors import McStudyError
from ..models.crossbars import analog_modules, crossbar_weights, why_digital
from .composite import ChipAttention, ChipLSTM, to_chip, torch_fast_paths_off
from .layers import Calibrate, ChipLayer, CompiledMaxPool2d, LayerCall, crossbar, linear_product, linear_rows, weight_matrix

Scales = list[torch.Tensor | None] | None

_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)  # per-sample, parameter-free: the same on every chip


class AnalogNetwork:
    """A copy of a trained model whose crossbar weights (``models.crossbars``: Linear,
    Conv1d/2d, LSTM, attention projections) run on chips.

    ``forward(x, read)`` evaluates inputs ``x`` (N, ...) on every chip of a
    :class:`~mcstudy.hardware.ChipRead` (one read of a block of chips) and returns logits
    ``(C, N, classes)``. The read is an argument, not state: the network never
    remembers a chip between calls.
    """

    @classmethod
    def from_state(
        cls, model: str, params: Params, state: dict[str, torch.Tensor], input_shape: tuple[int, ...], n_classes: int
    ) -> "AnalogNetwork":
        """The zoo model ``model`` with ``params``, its trained ``state`` loaded."""
        module = build_model(model, params, input_shape, n_classes)
        module.load_state_dict(state)
        return cls(module)

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).eval()
        self._reference = copy.deepcopy(self.module)  # the torch model, to find where each Linear's samples are
        self._probed: set[tuple[tuple[int, ...], torch.dtype]] = set()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.nominal: list[torch.Tensor] = []
        self.layers: list[ChipLayer] = []
        self.weight_names: list[str] = []  # each analog layer's weight parameter in the trained model
        self._swap(self.module)
        self._fuse_relus(self.module)
        self._shared_at = self._first_layer_of_shared_input()

    def _fuse_relus(self, parent: nn.Module) -> None:
        """A ReLU that directly follows an analog layer in a Sequential runs in that layer's
        digital stage (one pass over its output instead of three without autograd); the
        ReLU's place holds an Identity. The same numbers and gradients."""
        for child in parent.children():
            self._fuse_relus(child)
        if isinstance(parent, nn.Sequential):
            for k in range(1, len(parent)):
                if isinstance(parent[k], nn.ReLU) and isinstance(parent[k - 1], ChipLayer) and not parent[k - 1].relu:
                    parent[k - 1].relu = True
                    parent[k] = nn.Identity()

    def _first_layer_of_shared_input(self) -> int | None:
        """Where the model is a Sequential whose first analog layer is a direct child with only
        reshaping modules before it: that layer's index. Its input is then the same on every
        chip, so it takes one copy viewed by every chip instead of a ``(C·N, ...)`` copy."""
        if not isinstance(self.module, nn.Sequential):
            return None
        for k, m in enumerate(self.module):
            if isinstance(m, ChipLayer):
                return k
            if not isinstance(m, _RESHAPES):
                return None
        return None

    def _swap(self, parent: nn.Module, prefix: str = "") -> None:
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d:  # the same pooling, compiled for evaluation
                setattr(parent, name, CompiledMaxPool2d.like(child))
                continue
            converted = to_chip(child)
            if converted is None:
                self._swap(child, f"{prefix}{name}.")
                continue
            chip, layers = converted
            for weight, layer in zip(crossbar_weights(child) or [], layers):
                self.weight_names.append(f"{prefix}{name}.{weight}")
                self.nominal.append(weight_matrix(child.get_parameter(weight)).clone())
                layer.index = len(self.layers)
                self.layers.append(layer)
            setattr(parent, name, chip)

    def _find_batch_dims(self, x: torch.Tensor) -> None:
        """Where each Linear crossbar's input keeps its samples. Activations are
        sample-major (``(C·N, ...)``), but a Linear may take sequence-first tokens
        (``(L, C·N, E)``, torch's transformer default): the torch model is run once on 2
        and on 3 zero samples shaped like ``x``, and the dimension that changes with the
        batch is the sample dimension. Once per input shape; composites (LSTM, attention)
        put their crossbars' inputs sample-first themselves."""
        key = (tuple(x.shape[1:]), x.dtype)
        if key in self._probed:
            return
        linears = {f"{n}.weight": m for n, m in analog_modules(self._reference) if isinstance(m, nn.Linear)}
        seen: dict[str, list[tuple[int, ...]]] = {}
        hooks = [
            m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, []).append(tuple(args[0].shape)))
            for name, m in linears.items()
        ]
        try:
            with torch.no_grad(), torch_fast_paths_off():
                for b in (2, 3):
                    self._reference(torch.zeros(b, *x.shape[1:], dtype=x.dtype))  # on the CPU: only shapes are wanted
        finally:
            for h in hooks:
                h.remove()
        by_name = dict(zip(self.weight_names, self.layers))
        for name, shapes in seen.items():
            calls = len(shapes) // 2
            dims = {_changed_dim(a, b, name) for a, b in zip(shapes[:calls], shapes[calls:])}
            if len(dims) != 1:
                raise McStudyError(f"{name.removesuffix('.weight')} is called on inputs with their samples in different dimensions {sorted(dims)}")
            by_name[name].batch_dim = dims.pop()
        self._probed.add(key)

    def describe(self) -> tuple[list[str], list[str]]:
        """What runs where: each crossbar as ``weight: kind out×fan_in``, and the digital
        modules with parameters or computation by type, each type once (with the reason
        where a module of an analog kind stays digital: ``models.crossbars``)."""
        analog = [
            f"{n.removesuffix('.weight')}: {layer.kind} {w.shape[0]}×{w.shape[1]}"
            for n, w, layer in zip(self.weight_names, self.nominal, self.layers)
        ]
        digital: dict[str, None] = {}
        for m in self.module.modules():
            if isinstance(m, (ChipLayer, ChipLSTM, ChipAttention, CompiledMaxPool2d, nn.Sequential, nn.ModuleList, nn.ModuleDict)) or m is self.module and list(m.children()):
                continue
            reason = why_digital(m)
            if reason is not None:
                digital[f"{type(m).__name__} ({reason})"] = None
            elif not list(m.children()) or any(True for _ in m.parameters(recurse=False)):
                digital[type(m).__name__] = None
        return analog, list(digital)

    def layer_ranges(self, ranges: dict[str, float] | None) -> list[float] | None:
        """A trainer's full-scale weights (by parameter name) in the order of the analog
        layers, or None when it has none."""
        if ranges is None:
            return None
        missing = [n for n in self.weight_names if n not in ranges]
        if missing:
            raise ValueError(f"trained weight ranges lack the analog layers {missing}")
        return [float(ranges[n]) for n in self.weight_names]

    @property
    def granules(self) -> list[int]:
        """Crossbar rows of each layer that must share a tile (kh·kw for convolutions)."""
        return [layer.granule for layer in self.layers]

    def to(self, device: torch.device | str) -> "AnalogNetwork":
        self.module.to(device)
        self.nominal = [w.to(device) for w in self.nominal]
        return self

    def logits(
        self,
        x: torch.Tensor,
        read: ChipRead,
        out_scales: Scales = None,
        sample_offset: int = 0,
        out_shifts: Scales = None,
        purpose: str = "eval",
        calibrate: Calibrate | None = None,
    ) -> torch.Tensor:
        """Logits ``(C, N, classes)`` of inputs ``x`` on every chip of ``read``, differentiable
        with respect to the read's weights and the trims (for on-chip learning).

        For this call the analog layers compute with ``read`` and the digital output trims
        ``out_scales``/``out_shifts`` (per layer, each ``(C, 1|out)`` or None);
        ``sample_offset`` is the index of ``x[0]`` in its set and ``purpose`` names the set
        (per-input-vector noise is keyed by both, so batching never changes a result);
        ``calibrate``, if given, sets each layer's trims from that layer's own output."""
        n_layers = len(self.layers)
        if len(read.layers) != n_layers:
            raise ValueError(f"a read of {len(read.layers)} layers for {n_layers} analog layers")
        scales, shifts = out_scales or [None] * n_layers, out_shifts or [None] * n_layers
        c, n = read.n_chips, x.shape[0]
        self._find_batch_dims(x)
        k = self._shared_at
        shared = k is not None and c > 1  # the inputs of the first analog layer, once, for every chip
        try:
            for layer, lr, a, b in zip(self.layers, read.layers, scales, shifts):
                layer.call = LayerCall(lr, read.periphery, a, b, calibrate, sample_offset, purpose, shared and layer is self.module[k])
            with torch_fast_paths_off():
                out = self.module(x if shared else x.unsqueeze(0).expand(c, *x.shape).reshape(c * n, *x.shape[1:]))
        finally:  # the network never remembers a chip between calls
            for layer in self.layers:
                layer.call = None
        return out.reshape(c, n, *out.shape[1:])

    @torch.no_grad()
    def forward(self, x: torch.Tensor, read: ChipRead, out_scales: Scales = None, sample_offset: int = 0, out_shifts: Scales = None) -> torch.Tensor:
        """:meth:`logits` without gradients."""
        return self.logits(x, read, out_scales, sample_offset, out_shifts)

    @torch.no_grad()
    def readout(self, inputs: list[torch.Tensor], read: ChipRead) -> list[torch.Tensor]:
        """Column outputs ``(C, K, out)`` of every layer's crossbar for fixed inputs
        ``inputs[i]`` ``(K, fan_in)`` applied directly to it (the same on every chip), through
        the periphery and its noise: a readout of the chip, as calibration circuits do."""
        out = []
        for xi, lr in zip(inputs, read.layers):
            x = xi.unsqueeze(0).expand(read.n_chips, *xi.shape)
            out.append(crossbar(x, lr, read.periphery, linear_product, linear_rows, purpose="readout"))
        return out

    @torch.no_grad()
    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        read: ChipRead,
        out_scales: Scales = None,
        batch: int = 1024,
        out_shifts: Scales = None,
    ) -> dict[str, torch.Tensor]:
        """Per-chip accuracy and mean cross-entropy loss over ``(x, y)``, float64 ``(C,)``."""
        correct: torch.Tensor | float = 0.0
        loss: torch.Tensor | float = 0.0
        for a in range(0, x.shape[0], batch):
            logits = self.forward(x[a : a + batch], read, out_scales, sample_offset=a, out_shifts=out_shifts)
            yb = y[a : a + batch]
            c, n, k = logits.shape
            correct = correct + (logits.argmax(-1) == yb).sum(1, dtype=torch.float64)
            ce = F.cross_entropy(logits.reshape(c * n, k), yb.repeat(c), reduction="none")
            loss = loss + ce.reshape(c, n).to(torch.float64).sum(1)
        total = float(x.shape[0])
        return {"accuracy": correct / total, "loss": loss / total}  # type: ignore[operator]

    def nominal_read(self, n_chips: int = 1) -> ChipRead:
        """A read with the trained (float) weights and no periphery: the digital model."""
        layers = [
            LayerRead(
                weight=w.expand(n_chips, *w.shape),
                var=None,
                w_max=w.abs().amax().expand(1, w.shape[0]),
                row_slices=[slice(0, w.shape[1])],
                neurons=NeuronDraws(None, None),
                noise=None,
            )
            for w in self.nominal
        ]
        return ChipRead(layers, PeripherySpec())


def _changed_dim(a: tuple[int, ...], b: tuple[int, ...], name: str) -> int:
    """The one leading dimension in which a Linear's input for 2 samples (``a``) and for
    3 (``b``) differ: the sample dimension."""
    changed = [i for i, (p, q) in enumerate(zip(a[:-1], b[:-1])) if p != q]
    if len(changed) != 1 or len(a) != len(b):
        raise McStudyError(f"cannot tell which dimension of the input of {name.removesuffix('.weight')} holds the samples (shapes {a} and {b} for 2 and 3 samples)")
    return changed[0]
