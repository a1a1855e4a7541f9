"""A chip's numbers do not depend on what shares its call (``mcstudy/analog/invariant.py``):
the fixed-order products against their definition, and chip identity and batch
invariance for every analog kind under each CPU capability the machine has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcstudy import kernels
from mcstudy.analog import invariant

ROOT = Path(__file__).resolve().parents[1]
CAPABILITIES = ("default", "avx2", "avx512")  # PyTorch's x86 capabilities, lowest first


def _fma_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The definition: ``out[m, o]`` = fma(a[m, k], b[k, o], ·) over k in order from 0. A
    float32 product is exact in float64, so each step is the float64 sum rounded to float32
    (a double rounding that can differ from one fma only at ties, which these seeds avoid)."""
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for k in range(a.shape[1]):
        acc = (a[:, k : k + 1].astype(np.float64) * b[k : k + 1].astype(np.float64) + acc).astype(np.float32)
    return acc


@pytest.mark.parametrize("m, k, o", [(1, 1, 1), (3, 5, 6), (17, 33, 71), (9, 0, 5), (64, 300, 37), (13, 7, 100), (8, 784, 10)])
def test_each_product_is_the_fma_chain_in_index_order(m: int, k: int, o: int) -> None:
    """Every output is the fma chain of its definition, bit for bit, and so the same for a
    row alone, a block of columns alone and any batch stride (0: an operand shared)."""
    rng = np.random.default_rng(m * 1000 + k * 10 + o)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, o)).astype(np.float32)
    want = _fma_chain(a, b)
    out = np.empty((3, m, o), dtype=np.float32)
    shared_b = np.broadcast_to(b, (3, k, o))
    kernels.matmul_batched(np.stack([a, a[::-1], a]), shared_b, out)
    assert np.array_equal(out[0], want) and np.array_equal(out[2], want) and np.array_equal(out[1], want[::-1])
    for i in range(m):
        row = np.empty((1, 1, o), dtype=np.float32)
        kernels.matmul_batched(a[None, i : i + 1], b[None], row)
        assert np.array_equal(row[0, 0], want[i])
    if o > 3:
        cols = np.empty((1, m, o - 3), dtype=np.float32)
        kernels.matmul_batched(a[None], np.ascontiguousarray(b[None, :, 3:]), cols)
        assert np.array_equal(cols[0], want[:, 3:])
    # the torch entry point: narrow outputs computed on zero-padded columns, transposed operands
    got = invariant.matmul_values(torch.from_numpy(a)[None], torch.from_numpy(np.ascontiguousarray(b.T)).T[None])
    assert np.array_equal(got[0].numpy(), want)


def test_products_and_convolutions_are_torchs_functions_with_their_gradients() -> None:
    """``invariant.matmul`` and ``invariant.conv2d`` compute torch's ``bmm`` and ``conv2d``
    (to float32 rounding: another summation order) and differentiate like them; a chip's
    convolution is the same with its inputs shared (stride 0) or copied."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 7, 5, requires_grad=True), torch.randn(3, 5, 9, requires_grad=True)
    y, ref = invariant.matmul(a, b), torch.bmm(a, b)
    torch.testing.assert_close(y, ref)
    for g, r in zip(torch.autograd.grad(y.square().sum(), [a, b]), torch.autograd.grad(ref.square().sum(), [a, b])):
        torch.testing.assert_close(g, r)
    for cin, cout, k, s, p, d, h, w, groups in [(3, 5, 3, 1, 1, 1, 9, 8, 1), (4, 6, 2, 2, 0, 1, 7, 7, 2), (2, 3, 3, 1, 2, 2, 6, 10, 1)]:
        x = torch.randn(3, 4, cin, h, w, requires_grad=True)
        kern = torch.randn(3, cout, cin // groups * k * k, requires_grad=True)
        y = invariant.conv2d(x, kern, (k, k), (s, s), (p, p), (d, d), groups)
        ref = torch.stack([F.conv2d(x[c], kern[c].view(cout, cin // groups, k, k), None, s, p, d, groups) for c in range(3)])
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        for g, r in zip(torch.autograd.grad(y.square().sum(), [x, kern]), torch.autograd.grad(ref.square().sum(), [x, kern])):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        shared = torch.randn(1, 4, cin, h, w).expand(3, -1, -1, -1, -1)
        args = ((k, k), (s, s), (p, p), (d, d), groups)
        assert torch.equal(invariant.conv2d(shared, kern, *args), invariant.conv2d(shared.contiguous(), kern, *args))


def test_digital_modules_keep_torchs_function_under_batch_invariant() -> None:
    """Inside ``batch_invariant`` torch's own modules (Linear, GRU, grouped Conv1d, attention,
    an MLP with GELU and SiLU) compute their function and gradient to float32 rounding,
    and each sample alone gives the bits it gets in the batch."""
    import torch.nn as nn

    torch.manual_seed(0)
    cases = [
        (nn.Linear(5, 6), torch.randn(3, 4, 5), lambda m, v: m(v)),
        (nn.GRU(5, 6, batch_first=True), torch.randn(3, 4, 5), lambda m, v: m(v)[0]),
        (nn.Conv1d(4, 6, 3, groups=2, padding=1), torch.randn(3, 4, 9), lambda m, v: m(v)),
        (nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(3, 4, 8), lambda m, v: m(v, v, v)[0]),
        (nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 2), nn.SiLU()), torch.randn(11, 5), lambda m, v: m(v)),
    ]
    for module, x, f in cases:
        module.eval()
        x.requires_grad_(True)
        ref = f(module, x)
        (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
        with invariant.batch_invariant():
            out = f(module, x)
            (g,) = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
        with torch.no_grad(), invariant.batch_invariant():
            whole = f(module, x)
            assert all(torch.equal(whole[i : i + 1], f(module, x[i : i + 1])) for i in range(x.shape[0])), type(module).__name__
    assert torch.get_num_threads() >= 1 and not invariant._active and not invariant._routing  # left as found


def test_batch_invariant_keeps_pytorchs_errors_layouts_and_derivatives() -> None:
    """Inside ``batch_invariant``: products and convolutions of mismatched shapes raise
    PyTorch's errors (never reach the kernels); an elementwise result keeps its input's
    layout; in-place forms write back; a 0-dimensional call gets the value the element
    gets in a larger call; matrix-vector products are routed too; second derivatives flow
    through the fixed-order products."""
    torch.manual_seed(0)
    with invariant.batch_invariant():
        with pytest.raises(RuntimeError):
            torch.mm(torch.randn(2, 4000), torch.randn(10, 4))
        with pytest.raises(RuntimeError):
            torch.bmm(torch.randn(3, 2, 5), torch.randn(2, 5, 4))
        with pytest.raises(RuntimeError):
            F.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3))
        x = torch.randn(6, 5)
        assert torch.equal(torch.sigmoid(x.t()).t().reshape(-1), torch.sigmoid(x).reshape(-1))
        channels_last = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
        assert F.gelu(channels_last).is_contiguous(memory_format=torch.channels_last)
        y = x.clone()
        torch.nn.Mish(inplace=True)(y)
        assert torch.equal(y, F.mish(x))
        v = torch.randn(997) * 4
        assert all(torch.equal(torch.sigmoid(v[i]), torch.sigmoid(v)[i]) for i in range(0, 997, 7))
        m, vec = torch.randn(13, 35), torch.randn(35)
        assert all(torch.equal((m @ vec)[i], m[i] @ vec) for i in range(13))
        a = torch.randn(2, 3, 4, requires_grad=True)
        (g,) = torch.autograd.grad(invariant.matmul(a, a.transpose(1, 2)).square().sum(), a, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), a)
    (g_ref,) = torch.autograd.grad(torch.bmm(a, a.transpose(1, 2)).square().sum(), a, create_graph=True)
    torch.testing.assert_close(gg, torch.autograd.grad(g_ref.sum(), a)[0])


def _machine_capabilities() -> list[str]:
    """The capabilities PyTorch can use here: those up to the one it picks by itself."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    best = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"], env=env, capture_output=True, text=True, check=True).stdout.strip().lower()
    level = next((i for i, c in enumerate(CAPABILITIES) if best.startswith(c)), 0)
    return list(CAPABILITIES[: level + 1])


def test_every_analog_kind_keeps_chip_identity_under_every_cpu_capability() -> None:
    """Under each capability this machine has (``ATEN_CPU_CAPABILITY``, one process each):
    every analog kind (Linear over tokens, Conv1d/2d, LSTM, attention, the zoo's models,
    digital GELU/SiLU/sigmoid/GRU/grouped convolutions between) gives each chip the same
    bits alone as in a block and each sample however its set is split, with exact and with
    8-bit converters; each chip's gradient is the same alone; every elementwise function
    gives an element the same value and gradient wherever it sits in a call
    (``tests/invariance_checks.py``)."""
    seen = {}
    for cap in _machine_capabilities():
        run = subprocess.run(
            [sys.executable, "-m", "tests.invariance_checks"], cwd=ROOT, env={**os.environ, "ATEN_CPU_CAPABILITY": cap}, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["capability"].lower().startswith(cap), report
        assert report["problems"] == [], f"{cap}: " + "\n".join(report["problems"])
        seen[cap] = report["capability"]
    assert "default" in seen


def test_chip_identity_check_takes_arrays_and_explains_what_it_cannot_check() -> None:
    """``mcstudy.testing.chip_identity_problems`` on a user's network: NumPy inputs are
    taken; a batch of one, splits outside the batch and inputs the module does not take
    are errors naming the shapes; a network that mixes samples is one problem, not a crash."""
    import torch.nn as nn

    from mcstudy.testing import chip_identity_problems

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 3))
    x = np.random.default_rng(0).normal(size=(6, 5))  # float64: converted
    assert chip_identity_problems(net, x, chips=2, splits=(2,)) == []
    with pytest.raises(ValueError, match="at least 2 samples"):
        chip_identity_problems(net, x[:1])
    with pytest.raises(ValueError, match=r"splits must lie between 0 and the 6 samples .* got \[6\]"):
        chip_identity_problems(net, x, splits=(6,))
    with pytest.raises(ValueError, match=r"does not run on inputs of shape \(2, 4\)"):
        chip_identity_problems(net, x[:, :4])

    class BatchStatistic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            h = self.f(v)
            return self.g(h - h.mean(0))

    (problem,) = chip_identity_problems(BatchStatistic(), x)
    assert problem.startswith("mcstudy cannot run this network chip by chip") and "batch statistic" in problem


def test_a_network_of_invariant_modules_needs_no_routing_and_gets_the_same_bits() -> None:
    """``AnalogNetwork.routed``: a Sequential of analog layers, ReLU, pooling and reshapes
    runs without the dispatch mode, with the bits it gets with it;
    any other module (a sigmoid, a custom forward) is routed."""
    import torch.nn as nn

    from mcstudy.analog import AnalogNetwork
    from mcstudy.hardware import Population, TileSpec, Variation, WithinChip
    from mcstudy.hardware.mapping import DifferentialPair, Encoding
    from mcstudy.hardware.pcm import PCMDevice, PCMParams
    from mcstudy.rng import chip_stream

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 5), nn.ReLU(), nn.Linear(5, 3))
    net = AnalogNetwork(plain.eval())
    assert not net.routed and AnalogNetwork(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())).routed
    pop = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(within=WithinChip(sigma=0.05)), TileSpec(rows=8))
    read = pop.program(net.nominal, chip_stream(0, "routing", range(2)), net.granules).read(3600.0)
    x = torch.randn(7, 1, 8, 8)
    unrouted = net.forward(x, read)
    with invariant.batch_invariant(route=True):  # the inner pass keeps the outer routing
        assert invariant._routing
        routed = net.forward(x, read)
    assert torch.equal(unrouted, routed)
