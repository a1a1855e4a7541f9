"""A trained model deployed on a block of chips."""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

from ..hardware.chip import ChipRead, LayerRead
from ..models import build_model
from ..registry import Params
from ..hardware.periphery import DACSpec, NeuronDraws, PeripherySpec
from ..errors import McStudyError
from ..objectives import Objective
from ..models.crossbars import analog_modules, crossbar_weights, searched, why_digital
from .composite import ChipAttention, ChipLSTM, to_chip, torch_fast_paths_off
from .invariant import batch_invariant
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
        self._torch = copy.deepcopy(self.module)  # the torch model: its stored weights, and where each Linear's samples are
        self.reads_last_pass: list[int] = []  # how often each crossbar was read in the last forward pass
        self._probed: set[tuple[tuple[int, ...], torch.dtype]] = set()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.nominal: list[torch.Tensor] = []
        self.layers: list[ChipLayer] = []
        self.weight_names: list[str] = []  # each analog layer's weight parameter in the trained model
        self._swap()
        # the network as its trainer computes it (set_reference): by default the stored weights, exact inputs
        self.reference: list[torch.Tensor] = list(self.nominal)
        self.reference_periphery = PeripherySpec()
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

    def _swap(self) -> None:
        """Every module with crossbars replaced by its analog form, found by the walk that
        names the weights training perturbs (``models.crossbars.analog_modules``), and
        every max pooling by its compiled twin (the same pooling)."""
        for qualified, child in list(analog_modules(self.module)):
            if not qualified:
                continue  # the model is itself one analog module: nothing holds it to swap
            chip = to_chip(child)
            for weight, layer in zip(crossbar_weights(child) or [], chip.crossbars()):
                self.weight_names.append(f"{qualified}.{weight}")
                self.nominal.append(weight_matrix(child.get_parameter(weight)).clone())
                layer.index = len(self.layers)
                self.layers.append(layer)
            self._replace(qualified, chip)
        for qualified, m in list(self.module.named_modules()):
            if qualified and type(m) is nn.MaxPool2d:
                self._replace(qualified, CompiledMaxPool2d.like(m))

    def _replace(self, qualified: str, module: nn.Module) -> None:
        parent, _, name = qualified.rpartition(".")
        setattr(self.module.get_submodule(parent), name, module)

    def _find_batch_dims(self, x: torch.Tensor) -> None:
        """Where each Linear crossbar's input keeps its samples. Activations are
        sample-major (``(C·N, ...)``), but a Linear may take sequence-first tokens
        (``(L, C·N, E)``, torch's transformer default) or samples merged with tokens
        (``(N·L, E)``). The torch model runs once on 3 samples shaped like ``x`` and once
        more with each sample changed: the elements of a Linear's input that follow sample
        ``s`` are sample ``s``'s. Its samples must then sit in one dimension of its own, or
        lead a merged one (``(N·L, E)``, each sample's ``L`` rows together); a layout that
        mixes them (``(L·N, E)``) is refused. Once per input shape; composites (LSTM,
        attention) put their crossbars' inputs sample-first themselves."""
        key = (tuple(x.shape[1:]), x.dtype)
        if key in self._probed:
            return
        linears = {f"{n}.weight": m for n, m in analog_modules(self._torch) if isinstance(m, nn.Linear)}
        by_name = dict(zip(self.weight_names, self.layers))
        runs = [self._linear_inputs(linears, v) for v in _probe_inputs(x)]
        for name in linears:
            calls = {len(r.get(name, [])) for r in runs}
            if calls == {0}:
                by_name[name].batch_dim = None  # never read on these inputs: refused if it is read later
                continue
            if len(calls) != 1:
                raise McStudyError(f"{name.removesuffix('.weight')} is read a different number of times for different inputs; mcstudy cannot tell where its samples are")
            layouts = {_sample_layout(name, base, [r[name][i] for r in runs[1:]]) for i, base in enumerate(runs[0][name])}
            if len(layouts) != 1:
                raise McStudyError(f"{name.removesuffix('.weight')} is called on inputs with their samples in different places {sorted(layouts)}")
            by_name[name].batch_dim, by_name[name].rows_per_sample = layouts.pop()
        self._probed.add(key)

    def _linear_inputs(self, linears: dict[str, nn.Module], x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        seen: dict[str, list[torch.Tensor]] = {}
        hooks = [
            m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, []).append(args[0].detach().clone()))
            for name, m in linears.items()
        ]
        try:
            with torch.no_grad(), torch_fast_paths_off():
                self._torch(x)
        finally:
            for h in hooks:
                h.remove()
        return seen

    @property
    def routed(self) -> bool:
        """Whether a chip pass needs ``invariant.BatchInvariant`` to route its operations:
        every network but one composed by ``nn.Sequential`` of modules whose operations are
        invariant by construction (analog layers, ReLU, max-pooling, reshapes, dropout in
        evaluation), whose chip passes run mcstudy's own kernels and exact operations only."""
        return _routed(self.module)

    def invariant(self) -> contextlib.AbstractContextManager[None]:
        """The context a chip pass of this network runs in (forward, and on-chip learning's
        backward): ``invariant.batch_invariant``, routing where :attr:`routed`."""
        return batch_invariant(route=self.routed)

    def describe(self) -> tuple[list[str], list[str]]:
        """What runs where: each crossbar as ``weight: kind out×fan_in``, and the digital
        modules with parameters or computation by type, each type once (with the reason
        where a module of an analog kind stays digital: ``models.crossbars``)."""
        analog = [
            f"{n.removesuffix('.weight')}: {layer.kind} {w.shape[0]}×{w.shape[1]}"
            for n, w, layer in zip(self.weight_names, self.nominal, self.layers)
        ]
        digital: dict[str, None] = {"ReLU": None} if any(layer.relu for layer in self.layers) else {}  # fused into a layer's digital stage
        inner = {id(c) for m in self.module.modules() if not searched(m) for c in m.modules() if c is not m}
        for m in self.module.modules():
            if type(m) is nn.Identity or id(m) in inner:  # computes nothing (or holds a fused ReLU's place); part of a digital attention
                continue
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
        self.reference = [w.to(device) for w in self.reference]
        return self

    def stored_weights(self) -> dict[str, torch.Tensor]:
        """Every crossbar weight as the trained model stores it, by parameter name."""
        return {n: self._torch.get_parameter(n).detach() for n in self.weight_names}

    def set_reference(self, weights: dict[str, torch.Tensor], dac: DACSpec) -> None:
        """What the trained network computes in its trainer's own forward pass: the crossbar
        ``weights`` (by parameter name, as stored) and the ``dac`` its inputs pass through.
        :meth:`nominal_read` — every variant's reference accuracy, self-tuning's target
        statistics, in-situ learning's starting point — reads these; the chips are still
        programmed with :attr:`nominal`, the weights the trainer stored (a hardware-aware
        trainer stores the weights its transfer function maps, not the transfer's result)."""
        self.reference = [weight_matrix(weights[n].detach()).to(w).clone() for n, w in zip(self.weight_names, self.nominal)]
        self.reference_periphery = PeripherySpec(dac=dac)

    def logits(
        self,
        x: torch.Tensor,
        read: ChipRead,
        out_scales: Scales = None,
        sample_offset: int = 0,
        out_shifts: Scales = None,
        purpose: str = "eval",
        calibrate: Calibrate | None = None,
        known: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(C, N, classes)`` of inputs ``x`` on every chip of ``read``, differentiable
        with respect to the read's weights and the trims (for on-chip learning).

        For this call the analog layers compute with ``read`` and the digital output trims
        ``out_scales``/``out_shifts`` (per layer, each ``(C, 1|out)`` or None);
        ``sample_offset`` is the index of ``x[0]`` in its set and ``purpose`` names the set
        (per-input-vector noise is keyed by both, so batching never changes a result);
        ``calibrate``, if given, sets each layer's trims from that layer's own output.
        ``known``, if given, is each layer's weights ``(C | 1, out, in)`` as the chip's learning
        stage knows them: the gradient then flows through those and the chip's measured
        outputs, not through the chip's own deviations (on-chip learning; ``layers._surrogate``)."""
        n_layers = len(self.layers)
        if len(read.layers) != n_layers:
            raise ValueError(f"a read of {len(read.layers)} layers for {n_layers} analog layers")
        scales, shifts = out_scales or [None] * n_layers, out_shifts or [None] * n_layers
        c, n = read.n_chips, x.shape[0]
        self._find_batch_dims(x)
        k = self._shared_at
        shared = k is not None and c > 1  # the inputs of the first analog layer, once, for every chip
        try:
            for i, (layer, lr, a, b) in enumerate(zip(self.layers, read.layers, scales, shifts)):
                layer.call = LayerCall(
                    lr, read.periphery, a, b, calibrate, sample_offset, purpose, shared and layer is self.module[k], known=None if known is None else known[i]
                )
            with self.invariant():  # a chip's numbers whatever shares the call (invariant.py)
                out = self.module(x if shared else x.unsqueeze(0).expand(c, *x.shape).reshape(c * n, *x.shape[1:]))
        finally:  # the network never remembers a chip between calls
            self.reads_last_pass = [layer.call.calls if layer.call is not None else 0 for layer in self.layers]
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
        with batch_invariant(route=False):  # the crossbars alone: invariant by construction
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
        objective: Objective | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-chip means over ``(x, y)`` of the objective's metrics (default: accuracy and
        cross-entropy loss), each float64 ``(C,)``."""
        objective = objective or Objective()
        sums: dict[str, torch.Tensor] = {}
        for a in range(0, x.shape[0], batch):
            outputs = self.forward(x[a : a + batch], read, out_scales, sample_offset=a, out_shifts=out_shifts)
            for m, v in objective.sums(outputs, y[a : a + batch]).items():
                sums[m] = sums[m] + v if m in sums else v
        total = float(x.shape[0])
        return {m: v / total for m, v in sums.items()}

    def nominal_read(self, n_chips: int = 1) -> ChipRead:
        """A read of the trained network as its trainer computes it (:meth:`set_reference`):
        the reference weights and the trainer's DAC, no device, no other periphery — the
        digital model every variant is judged against."""
        layers = [
            LayerRead(
                weight=w.expand(n_chips, *w.shape),
                var=None,
                w_max=w.abs().amax().expand(1, w.shape[0]),
                row_slices=[slice(0, w.shape[1])],
                neurons=NeuronDraws(None, None),
                noise=None,
            )
            for w in self.reference
        ]
        return ChipRead(layers, self.reference_periphery)


_INVARIANT_MODULES = (ChipLayer, CompiledMaxPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.ReLU, nn.Dropout, *_RESHAPES)


def _routed(m: nn.Module) -> bool:
    """Whether a chip pass through ``m`` may run operations whose result for an element
    depends on the rest of the call (see :attr:`AnalogNetwork.routed`)."""
    if type(m) is nn.Sequential:
        return any(_routed(child) for child in m)
    return not isinstance(m, _INVARIANT_MODULES)


def _probe_inputs(x: torch.Tensor) -> list[torch.Tensor]:
    """3 samples like ``x`` (its first, repeated where it has fewer), then the same with
    sample 0, 1 and 2 changed in turn (a random step; integers shifted by one)."""
    base = x[torch.arange(3) % x.shape[0]].detach().cpu().clone()
    gen = torch.Generator().manual_seed(0)
    out = [base]
    for s in range(3):
        v = base.clone()
        if v.dtype.is_floating_point:
            v[s] += torch.randn(v[s].shape, generator=gen, dtype=v.dtype) * (v.abs().mean() + 1)
        else:
            v[s] = (v[s] + 1) % (int(x.max()) + 1)
        out.append(v)
    return out


def _sample_layout(name: str, base: torch.Tensor, changed: list[torch.Tensor]) -> tuple[int, int]:
    """``(dimension, rows per sample)`` of a Linear's input ``base`` whose versions
    ``changed[s]`` follow a change of sample ``s`` alone: a dimension of size 3 along which
    sample ``s`` moves index ``s`` only (1 row each), or a leading dimension of ``3k`` rows
    in which sample ``s`` moves rows ``sk .. sk + k − 1`` only. A sample that moves
    nothing (every unit it reaches is a dead ReLU) fits any layout."""
    layer = name.removesuffix(".weight")
    moved = [(c != base).reshape(*base.shape[:-1], -1).any(-1) if base.dim() > 1 else (c != base).any().reshape(1) for c in changed]
    if base.dim() < 2 or not any(bool(m.any()) for m in moved):
        # the same for every sample (an LSTM's zero initial state): the one leading dimension of 3
        threes = [d for d in range(base.dim() - 1) if base.shape[d] == 3]
        if len(threes) == 1:
            return threes[0], 1
        raise McStudyError(f"{layer}'s input does not depend on the samples (shape {tuple(base.shape)}): mcstudy cannot tell where its samples are")
    for d in range(base.dim() - 1):
        n = base.shape[d]
        if n % 3:
            continue
        k = n // 3
        along = [m.movedim(d, 0).reshape(n, -1).any(-1) for m in moved]  # which indices of d each sample moves
        if all(not a[: s * k].any() and not a[(s + 1) * k :].any() for s, a in enumerate(along)):
            if k > 1 and d != 0:
                break  # samples merged with another dimension, not in front: mixed
            return d, k
    raise McStudyError(
        f"{layer}'s input (shape {tuple(base.shape)} for 3 samples) mixes the samples: give it inputs whose samples have a "
        "dimension of their own, or lead a merged one ((N·L, E), not (L·N, E)); an operation across samples (a batch "
        "statistic such as x.mean(0), or batch norm in training mode) cannot run chip by chip"
    )
