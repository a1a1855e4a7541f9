"""Chip identity and batch invariance for every analog kind, as one process sees them.

Run by ``tests/test_invariance.py`` once per CPU capability (``ATEN_CPU_CAPABILITY``),
each in its own process (PyTorch reads the variable once). Prints one JSON object: the
capability PyTorch used and every problem found (none expected).
"""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcstudy.analog import AnalogNetwork
from mcstudy.analog.invariant import batch_invariant
from mcstudy.hardware import ChipRead, Population, TileSpec, Variation, WithinChip
from mcstudy.hardware.mapping import DifferentialPair, Encoding
from mcstudy.hardware.pcm import PCMDevice, PCMParams
from mcstudy.models import build_model
from mcstudy.registries import MODELS
from mcstudy.rng import chip_stream
from mcstudy.testing import chip_identity_problems
from tests.test_own_network import _EveryKind

# elementwise functions (forward and backward) whose PyTorch CPU kernels differ between
# their vectorised and scalar forms on at least one capability
FUNCTIONS = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu, "gelu (tanh)": lambda v: F.gelu(v, approximate="tanh"),
    "silu": F.silu, "mish": F.mish, "elu": F.elu, "selu": F.selu, "celu": F.celu, "softplus": F.softplus,
    "logsigmoid": F.logsigmoid, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "exp": torch.exp, "erf": torch.erf,
    "atan2": lambda v: torch.atan2(v, 0.7 * v + 0.1), "exp2": torch.exp2, "logaddexp": lambda v: torch.logaddexp(v, 0.5 * v),
    "pow": lambda v: torch.pow(v.abs() + 0.1, 0.3 * v), "add with alpha": lambda v: torch.add(v, 0.5 * v, alpha=0.3),
    "mish in place": lambda v: F.mish(v.clone(), inplace=True), "gelu in place": lambda v: torch.ops.aten.gelu_(v.clone()),
    "a matrix-vector product": lambda v: torch.stack([v, 0.5 * v, -v], 1) @ torch.tensor([0.3, -1.7, 0.9]),
}  # fmt: skip


def _merged_tokens() -> nn.Module:
    class Merged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(5, 7), nn.Linear(7, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, f = x.shape
            return self.g(F.silu(self.f(x.reshape(n * t, f)))).reshape(n, t * 3)

    return Merged()


def networks() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every analog kind, with odd widths (vector tails) and digital functions between."""
    torch.manual_seed(0)
    zoo = {name: MODELS.get(name) for name in ("mlp", "lenet", "lstm", "transformer")}
    mixed = nn.Sequential(
        nn.Flatten(), nn.Linear(35, 23), nn.GELU(), nn.Linear(23, 17), nn.SiLU(), nn.Linear(17, 13), nn.Softplus(),
        nn.Linear(13, 11), nn.ELU(), nn.Linear(11, 3),
    )  # fmt: skip
    conv = nn.Sequential(nn.Conv2d(2, 5, 3, padding="same"), nn.Sigmoid(), nn.Conv2d(5, 3, 2, stride=2), nn.Mish(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    return {
        "Linear with GELU, SiLU, softplus and ELU between": (mixed, torch.randn(9, 5, 7)),
        "Linear over samples merged with tokens": (_merged_tokens(), torch.randn(9, 7, 5)),
        "Conv2d ('same' with an even kernel, stride 2) with sigmoid and Mish": (conv, torch.randn(9, 2, 7, 7)),
        "Conv1d, LSTM, attention, encoder, digital grouped Conv1d and GRU": (_EveryKind(), torch.randn(9, 2, 7)),
        "zoo mlp (sigmoid)": (build_model("mlp", zoo["mlp"].params(hidden=(19, 13), activation="sigmoid"), (1, 6, 6), 5), torch.randn(9, 1, 6, 6)),
        "zoo mlp (ReLU: no routing needed)": (build_model("mlp", zoo["mlp"].params(hidden=(19, 13)), (1, 6, 6), 5), torch.randn(9, 1, 6, 6)),
        "zoo lenet": (build_model("lenet", zoo["lenet"].params(channels=(3, 5), hidden=(11,), kernel=3), (1, 12, 12), 4), torch.randn(9, 1, 12, 12)),
        "zoo lstm": (build_model("lstm", zoo["lstm"].params(hidden=7, layers=2, step=3), (1, 21), 4), torch.randn(9, 1, 21)),
        "zoo transformer": (build_model("transformer", zoo["transformer"].params(dim=10, heads=2, blocks=1, mlp=14, patch=3), (2, 21), 4), torch.randn(9, 2, 21)),
    }


def function_problems() -> list[str]:
    """Each elementwise function's value and gradient for an element, under
    ``batch_invariant``, the same wherever the element sits in the call."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(997, generator=gen) * 4
    problems = []
    for name, f in FUNCTIONS.items():
        v = x.clone().requires_grad_(True)
        with batch_invariant():
            out = f(v)
            (grad,) = torch.autograd.grad(out.sum(), v)
        for start, length in ((0, 1), (3, 5), (17, 33), (100, 64), (901, 96), (1, 995)):
            w = x[start : start + length].clone().requires_grad_(True)
            with batch_invariant():
                part = f(w)
                (g,) = torch.autograd.grad(part.sum(), w)
            if not torch.equal(part, out[start : start + length]) or not torch.equal(g, grad[start : start + length]):
                problems.append(f"{name}: elements {start}..{start + length - 1} alone differ from the same elements in a call of {x.numel()}")
                break
    return problems


def gradient_problems() -> list[str]:
    """On-chip learning: each chip's gradient with respect to its read weights is the same
    alone as in a block, for a network that needs routing and for one that does not."""
    problems = []
    for name in ("Conv1d, LSTM, attention, encoder, digital grouped Conv1d and GRU", "zoo lenet"):
        module, x = networks()[name]
        net = AnalogNetwork(module.eval())
        pop = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(within=WithinChip(sigma=0.05)), TileSpec(rows=16))

        def grads(chips: list[int]) -> list[torch.Tensor]:
            read = pop.program(net.nominal, chip_stream(0, "grad", chips), net.granules).read(3600.0)
            weights = [lr.weight.clone().requires_grad_(True) for lr in read.layers]
            read = ChipRead([dataclasses.replace(lr, weight=w) for lr, w in zip(read.layers, weights)], read.periphery)
            with torch.enable_grad():
                loss = net.logits(x, read).square().sum()
                with net.invariant():
                    return list(torch.autograd.grad(loss, weights))

        block, alone = grads([0, 1, 2]), grads([2])
        problems += [f"{name}, layer {i}: chip 2's weight gradient differs alone and in a block of 3" for i, (b, a) in enumerate(zip(block, alone)) if not torch.equal(b[2], a[0])]
    return problems


def main() -> None:
    problems = [f"{name}: {p}" for name, (module, x) in networks().items() for p in chip_identity_problems(module.eval(), x)]
    problems += function_problems() + gradient_problems()
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "problems": problems}))


if __name__ == "__main__":
    main()
