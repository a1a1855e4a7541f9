"""``mcstudy bench``: how fast a study runs, as ratios measured in one run.

Reference workload (issue 9): an MLP 784-256-128-10 (and LeNet-5 on 28×28 inputs),
1,000 test inputs, PCM on a differential pair, global drift compensation, 5 drift times
per chip, 8-bit DAC/ADC off and on. Figures, all in chip-time evaluations per second
(one chip at one drift time scoring the 1,000 inputs):

- ``batched``: mcstudy's path — a block of chips programmed once, every drift time read
  from the stored per-device state, compensation readouts, then the batched forward;
- ``loop``: the usual way, one chip at a time in plain PyTorch — sample the chip, drift,
  read, compensate, evaluate — with the same physics (the PCM model of Nandakumar et al. 2019 and Joshi et al. 2020);
- ``float``: the plain float forward of the same shapes on the same inputs (the floor);
- ``products``: the crossbar products alone (MLP, LeNet; a block of chips on the 1,000
  inputs) by mcstudy's fixed-order kernels (``analog/invariant.py``: one summation order
  per output, whatever shares the call) and by the BLAS / native convolution they
  replace, in GFLOP/s;
- local executor scaling from 1 to 2 workers on a study of ``scaling_chips`` chips;
- the coordinator's peak memory for a small and a ten-times larger study.

Every ratio compares figures measured in the same run on the same machine: each figure
is the median of :data:`ROUNDS` interleaved measurements (float, batched, loop, float, …)
and each ratio the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .analog import AnalogNetwork
from .execution.allocator import keep_freed_memory
from .hardware import PeripherySpec, Population, TileSpec, Variation
from .hardware.mapping import DifferentialPair, Encoding
from .hardware.pcm import PCMDevice, PCMParams, drift_mu, drift_sigma, programming_sigma, read_noise_qs, read_noise_time_factor
from .hardware.periphery import ADCSpec, DACSpec, quantise_input, quantise_symmetric
from .models import build_model
from .models.zoo import LeNetParams
from .procedures import EvalData
from .procedures.drift_compensation import DriftCompensation, DriftCompensationParams
from .rng import chip_stream

TIMES = (20.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)
ROUNDS = 3  # each figure is the median of this many interleaved measurements
N_INPUTS = 1000


@dataclass
class Workload:
    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    converters: bool

    @property
    def periphery(self) -> PeripherySpec:
        if not self.converters:
            return PeripherySpec()
        return PeripherySpec(dac=DACSpec(bits=8), adc=ADCSpec(bits=8))


def workloads(quick: bool) -> list[Workload]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    lenet = build_model("lenet", LeNetParams(), (1, 28, 28), 10).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(N_INPUTS, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (N_INPUTS,), generator=gen)
    out = [Workload("mlp", mlp, x, y, False), Workload("mlp", mlp, x, y, True), Workload("lenet", lenet, x, y, False)]
    if not quick:
        out.append(Workload("lenet", lenet, x, y, True))
    return out


def _population(w: Workload) -> Population:
    """PCM on a differential pair, one crossbar tile per layer (as the loop maps weights)."""
    big = TileSpec(rows=1 << 16, cols=1 << 16)
    return Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), big, w.periphery)


def _timed(fn: Callable[[], int], min_seconds: float) -> float:
    """Units per second of ``fn`` (which returns how many units it did), repeated for at least ``min_seconds``."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def batched_accuracies(w: Workload, chips: range) -> torch.Tensor:
    """mcstudy's path for a block of chips: program once, a reference readout, then at every
    time a read, a compensation readout and the batched forward; ``(time, chip)`` accuracies."""
    net = AnalogNetwork(w.model)
    data = EvalData(w.x, w.y, w.x[:0], w.y[:0], batch=N_INPUTS)
    proc = DriftCompensation(DriftCompensationParams())
    block = _population(w).program(net.nominal, chip_stream(0, "bench", chips), net.granules).scheduled([*TIMES, *proc.read_times(TIMES)])
    state = proc.prepare(block, net, data)
    return torch.stack([proc.evaluate(state, block, block.read(t), t, net, data)["accuracy"] for t in TIMES])


def batched_rate(w: Workload, block: int, min_seconds: float) -> float:
    counter = iter(range(10**9))

    def run() -> int:
        start = next(counter) * block
        batched_accuracies(w, range(start, start + block))
        return block * len(TIMES)

    return _timed(run, min_seconds)


def _crossbar_inputs(w: Workload) -> list[tuple[nn.Module, torch.Tensor]]:
    """Every crossbar layer of the workload's network with its input on the 1,000 inputs."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    layers = [m for m in w.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].detach()))) for m in layers]
    with torch.no_grad():
        w.model(w.x)
    for h in hooks:
        h.remove()
    return seen


def product_rates(w: Workload, block: int, min_seconds: float) -> tuple[float, float]:
    """GFLOP/s of the workload's crossbar products for a block of chips on the 1,000 inputs
    (the first layer's inputs shared by every chip, as deployed): mcstudy's fixed-order
    kernels (``analog.invariant``) and the BLAS / native convolution they replace."""
    from .analog import invariant

    gen = torch.Generator().manual_seed(2)
    cases = []
    for i, (m, x) in enumerate(seen := _crossbar_inputs(w)):
        kern = m.weight.detach().reshape(m.weight.shape[0], -1)
        wc = kern + 0.01 * torch.randn(block, *kern.shape, generator=gen)
        xc = x.unsqueeze(0).expand(block, *x.shape) if i == 0 else x.unsqueeze(0).repeat(block, *([1] * x.dim()))
        cases.append((m, xc, wc))
    flops = 0.0
    for m, xc, wc in cases:
        out_positions = m(xc[0][:1]).shape[2:].numel() if isinstance(m, nn.Conv2d) else 1
        flops += 2.0 * xc.shape[0] * xc.shape[1] * wc.shape[1] * wc.shape[2] * out_positions

    def fixed() -> int:
        for m, xc, wc in cases:
            if isinstance(m, nn.Conv2d):
                invariant.conv2d(xc, wc, m.kernel_size, m.stride, m.padding, m.dilation)
            else:
                invariant.matmul(xc, wc.transpose(1, 2))
        return 1

    def blas() -> int:
        for m, xc, wc in cases:
            if isinstance(m, nn.Conv2d):  # one group per chip on the native kernel (oneDNN's grouped sums differ from single-group ones)
                c, n = xc.shape[:2]
                F.conv2d(xc.transpose(0, 1).reshape(n, -1, *xc.shape[3:]), wc.reshape(-1, *m.weight.shape[1:]), None, m.stride, m.padding, m.dilation, groups=c)
            else:
                torch.bmm(xc, wc.transpose(1, 2))
        return 1

    del seen
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return flops * _timed(fixed, min_seconds) / 1e9, flops * _timed(blas, min_seconds) / 1e9
    finally:
        torch.backends.mkldnn.enabled = mkldnn


def float_rate(w: Workload, min_seconds: float) -> float:
    """The plain float forward of the same shapes on the same inputs."""

    def run() -> int:
        with torch.no_grad():
            w.model(w.x)
        return 1

    return _timed(run, min_seconds)


def loop_accuracies(w: Workload, chip: int) -> list[float]:
    """One chip in plain PyTorch, the usual way: draw programming noise and drift
    exponents for every device with ``torch.randn``, then at each drift time drift, read
    (1/f noise), decode, compensate with a readout of fixed inputs and evaluate layer by
    layer. The same physics as the batched path (one crossbar tile per layer, the same
    DAC/ADC); returns the chip's accuracy at each of ``TIMES``."""
    p = PCMParams()
    g_max = p.g_max
    layers = [m for m in w.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    fixed = [torch.rand(64, m.weight[0].numel(), generator=torch.Generator().manual_seed(i)) * 2 - 1 for i, m in enumerate(layers)]
    dac, adc = w.periphery.dac, w.periphery.adc
    gen = torch.Generator().manual_seed(chip)

    def analog(x: torch.Tensor, wt: torch.Tensor, w_max: torch.Tensor, conv: nn.Conv2d | None) -> torch.Tensor:
        scale = x.abs().flatten(1).amax(1).clamp(min=1e-30).view(-1, *([1] * (x.dim() - 1)))
        if dac.bits is not None:
            x = quantise_input(x, scale, dac)
        y = F.linear(x, wt) if conv is None else F.conv2d(x, wt.view_as(conv.weight), None, conv.stride, conv.padding)
        if adc.bits is not None:
            norm = scale.view(-1, *([1] * (y.dim() - 1))) * w_max
            y = quantise_symmetric(y / norm, adc.range, adc.bits) * norm
        return y

    def forward(x: torch.Tensor, weights: list[torch.Tensor], w_maxes: list[torch.Tensor], alphas: list[torch.Tensor]) -> torch.Tensor:
        i = 0
        for m in w.model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                y = analog(x, weights[i], w_maxes[i], m if isinstance(m, nn.Conv2d) else None) * alphas[i]
                x = y + (m.bias.view(1, -1, *([1] * (y.dim() - 2))) if m.bias is not None else 0)
                i += 1
            elif isinstance(m, (nn.Flatten, nn.ReLU, nn.MaxPool2d, nn.Tanh, nn.Sigmoid)):
                x = m(x)
        return x

    progs = []
    for m in layers:
        wm = m.weight.detach().reshape(m.weight.shape[0], -1)
        w_max = wm.abs().amax()
        g_t = torch.stack((wm.clamp(min=0), (-wm).clamp(min=0))) / w_max * g_max
        g_p = (g_t + programming_sigma(g_t, p) * torch.randn(g_t.shape, generator=gen)).clamp(min=0)
        nu = (drift_mu(g_t, p) + drift_sigma(g_t, p) * torch.randn(g_t.shape, generator=gen)).abs()
        progs.append((g_p, nu, w_max))

    def read(t: float) -> list[torch.Tensor]:
        out = []
        for g_p, nu, w_max in progs:
            g_d = g_p * (max(t, p.t0) / p.t0) ** (-nu)
            sigma = g_d * read_noise_qs(g_p, p) * read_noise_time_factor(t, p)
            g = (g_d + sigma * torch.randn(g_d.shape, generator=gen)).clamp(min=0)
            out.append((g[0] - g[1]) * (w_max / g_max))
        return out

    def readout(weights: list[torch.Tensor], w_maxes: list[torch.Tensor]) -> list[torch.Tensor]:
        return [analog(f, wt, wx, None).abs().mean() for f, wt, wx in zip(fixed, weights, w_maxes)]

    accuracies = []
    with torch.no_grad():
        w_maxes = [w_max for _, _, w_max in progs]
        ref = readout(read(20.0), w_maxes)
        for t in TIMES:
            weights = read(t)
            alphas = [r / c for r, c in zip(ref, readout(weights, w_maxes))]
            logits = forward(w.x, weights, w_maxes, alphas)
            accuracies.append(float((logits.argmax(1) == w.y).float().mean()))
    return accuracies


def loop_rate(w: Workload, min_seconds: float) -> float:
    """:func:`loop_accuracies` for one chip after another."""
    counter = iter(range(10**9))

    def run() -> int:
        loop_accuracies(w, next(counter))
        return len(TIMES)

    return _timed(run, min_seconds)


# -- executor scaling and coordinator memory ------------------------------------------------

_STUDY = """
name: bench_scaling
seed: 1
chips: {chips}
times: {times}
data: {{dataset: digits}}
model: {{name: mlp, hidden: [256, 128]}}
variants:
  float: {{trainer: standard, epochs: 3}}
hardware:
  pcm:
    device: pcm
    mapping: differential
    variation: {{within: {{sigma: 0.05}}}}
procedures:
  compensated: {{kind: drift_compensation, mode: global}}
execution: {{block_size: {block}}}
"""

_CHILD = """
import resource, sys, time
from mcstudy import load_study
from mcstudy.execution import RunOptions, run_study
spec = load_study(sys.argv[1])
t0 = time.perf_counter()
run_study(spec, RunOptions(sys.argv[2], executor=sys.argv[3], workers=int(sys.argv[4]), cache_dir=sys.argv[5], progress=False))
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _run_study(tmp: Path, chips: int, times: str, executor: str, workers: int, tag: str) -> tuple[float, float]:
    """Seconds and the coordinator's peak RSS (MiB) of one study run in a fresh process."""
    study = tmp / f"{tag}.yaml"
    study.write_text(_STUDY.format(chips=chips, times=times, block=64))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(study), str(tmp / f"{tag}.zarr"), executor, str(workers), str(tmp / "cache")],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"benchmark study failed:\n{out.stderr[-2000:]}")
    seconds, rss_kib = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(rss_kib) / 1024


@dataclass
class BenchResult:
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    products: list[dict[str, Any]] = field(default_factory=list)
    scaling: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)


def run(quick: bool = False, block: int = 8, log: Callable[[str], None] = print) -> BenchResult:
    min_seconds = 0.5 if quick else 2.0
    torch.set_num_threads(1)  # every figure on one core: the per-core floor and one worker's rate
    keep_freed_memory()  # as a study's workers do (execution/allocator.py), for the float forward and the loop too
    res = BenchResult(machine={"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": quick})
    for w in workloads(quick):
        label = f"{w.name}, converters {'8-bit' if w.converters else 'off'}"
        rounds: list[tuple[float, float, float]] = []
        for r in range(ROUNDS):  # interleaved, so a shared machine's drifting speed hits all three alike
            log(f"  {label}: float forward, batched ({block} chips per block), one chip at a time — round {r + 1} of {ROUNDS}")
            rounds.append((float_rate(w, min_seconds), batched_rate(w, block, min_seconds), loop_rate(w, min_seconds)))
        f, b, lp = (statistics.median(x[i] for x in rounds) for i in range(3))
        res.rows.append({"workload": w.name, "converters": w.converters, "float": f, "batched": b, "loop": lp,
                         "fraction_of_float": statistics.median(x[1] / x[0] for x in rounds),
                         "batched_over_loop": statistics.median(x[1] / x[2] for x in rounds),
                         "rounds": [list(x) for x in rounds]})  # fmt: skip
    for w in workloads(True):
        if w.converters:
            continue
        prounds = []
        for r in range(ROUNDS):
            log(f"  {w.name}: crossbar products of {block} chips, fixed order and BLAS — round {r + 1} of {ROUNDS}")
            prounds.append(product_rates(w, block, min_seconds))
        res.products.append({"workload": w.name, "fixed_gflops": statistics.median(x[0] for x in prounds),
                             "blas_gflops": statistics.median(x[1] for x in prounds),
                             "fixed_over_blas": statistics.median(x[0] / x[1] for x in prounds), "rounds": [list(x) for x in prounds]})  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        chips = 400 if quick else 2000
        times = "[20s, 1h, 1d, 1mo, 1y]"
        _run_study(tmp, 2, times, "serial", 1, "warm")  # trains the network into the cache
        log(f"  local executor, {chips} chips: 1 worker")
        t1, _ = _run_study(tmp, chips, times, "local", 1, "w1")
        log(f"  local executor, {chips} chips: 2 workers")
        t2, _ = _run_study(tmp, chips, times, "local", 2, "w2")
        res.scaling = {"chips": chips, "seconds_1": t1, "seconds_2": t2, "speedup": t1 / t2}
        small, large = (1000, 10000) if quick else (2000, 20000)
        log(f"  coordinator memory: {small} and {large} chips")
        _, m_small = _run_study(tmp, small, "[1d]", "local", 2, "m_small")
        _, m_large = _run_study(tmp, large, "[1d]", "local", 2, "m_large")
        res.memory = {"small_chips": small, "large_chips": large, "small_mib": m_small, "large_mib": m_large, "ratio": m_large / m_small}
    mlp = next(r for r in res.rows if r["workload"] == "mlp" and not r["converters"])
    cnn = next(r for r in res.rows if r["workload"] == "lenet" and not r["converters"])
    res.targets = {
        "mlp batched >= 60 % of float": [mlp["fraction_of_float"], mlp["fraction_of_float"] >= 0.6],
        "cnn batched >= 40 % of float": [cnn["fraction_of_float"], cnn["fraction_of_float"] >= 0.4],
        "batched >= 10x loop (mlp)": [mlp["batched_over_loop"], mlp["batched_over_loop"] >= 10],
        "2 workers >= 1.6x 1 worker": [res.scaling["speedup"], res.scaling["speedup"] >= 1.6],
        "memory large <= 1.5x small": [res.memory["ratio"], res.memory["ratio"] <= 1.5],
    }
    return res


def to_json(res: BenchResult, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=2) + "\n", encoding="utf-8")


def tables(res: BenchResult) -> list[Any]:
    from rich.table import Table

    t = Table(title=f"chip-time evaluations per second ({N_INPUTS} inputs, {len(TIMES)} drift times per chip, 1 thread)")
    for col in ("workload", "DAC/ADC", "float forward", "mcstudy batched", "one chip at a time", "batched / float", "batched / loop"):
        t.add_column(col, justify="right")
    for r in res.rows:
        t.add_row(r["workload"], "8-bit" if r["converters"] else "off", f"{r['float']:.1f}", f"{r['batched']:.1f}", f"{r['loop']:.1f}",
                  f"{r['fraction_of_float']:.0%}", f"{r['batched_over_loop']:.1f}×")  # fmt: skip
    p = Table(title=f"crossbar products of a block of chips on {N_INPUTS} inputs, GFLOP/s on 1 thread (analog/invariant.py)")
    for col in ("workload", "fixed order (mcstudy)", "BLAS / native conv", "fixed / BLAS"):
        p.add_column(col, justify="right")
    for r in res.products:
        p.add_row(r["workload"], f"{r['fixed_gflops']:.1f}", f"{r['blas_gflops']:.1f}", f"{r['fixed_over_blas']:.2f}×")
    s = Table(title="targets (ratios measured in this run)")
    for col in ("target", "measured", "met"):
        s.add_column(col, justify="right")
    for name, (value, ok) in res.targets.items():
        s.add_row(name, f"{value:.2f}", "yes" if ok else "NO")
    sc = res.scaling
    s.add_row(f"(local executor on {sc['chips']} chips: {sc['seconds_1']:.1f} s → {sc['seconds_2']:.1f} s)", "", "")
    m = res.memory
    s.add_row(f"(coordinator peak RSS {m['small_mib']:.0f} MiB → {m['large_mib']:.0f} MiB)", "", "")
    return [t, p, s]


__all__ = ["BenchResult", "run", "tables", "to_json"]
