"""The CUDA path against the CPU path: the same chips, the same numbers (within float32
rounding of ln / cos / exp, which the GPU rounds differently in the last bit), and its speed.

Run on a machine with a GPU: ``python benchmarks/cuda_check.py --json cuda_check.json``.
It programs the same chips on both devices and compares the programmed PCM states and the
decoded reads; then it runs whole work units of two studies (the quickstart MLP and a
LeNet) on both devices through the workers' own code and compares the per-chip accuracy
and loss; and it times a work unit on each device. Nothing here is a test: it prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mcstudy import load_study
from mcstudy.analog import AnalogNetwork
from mcstudy.data import load_dataset
from mcstudy.execution.plan import WorkUnit
from mcstudy.execution.worker import Payload, WorkerContext
from mcstudy.hardware import DEVICES, MAPPINGS, Population, Variation
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams
from mcstudy.rng import chip_stream
from mcstudy.training import TrainJob, run_train_job

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a − b| relative to the largest |b|."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()  # a: the device's, b: the CPU's
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def state_and_reads(dev: torch.device, chips: int) -> dict[str, float]:
    """PCM programming and reads of an MLP's layers on the CPU and on ``dev``, for the same chips."""
    torch.manual_seed(0)
    net = AnalogNetwork(build_model("mlp", MLPParams(hidden=(256, 128)), (1, 28, 28), 10))
    out: dict[str, float] = {}
    variation = Variation.model_validate({"within": {"sigma": 0.05}, "between": {"sigma": 0.1, "granularity": "layer"}})
    for mapping in ("differential", "multi_pair"):
        pop = Population(DEVICES.get("pcm").obj(DEVICES.get("pcm").params()), MAPPINGS.get(mapping).obj(MAPPINGS.get(mapping).params()), variation)
        ref, other = (pop.program([w.to(d) for w in net.nominal], chip_stream(1, "cuda", range(chips), d), net.granules) for d in (CPU, dev))
        for key in ("g_prog", "nu", "qs"):
            out[f"{mapping}.{key}"] = max(_rel(other.programmed(i, key), ref.programmed(i, key)) for i in range(len(net.nominal)))
        for t in (20.0, 86400.0, 365 * 86400.0):
            a, b = other.read(t), ref.read(t)
            out[f"{mapping}.weights@{t:g}s"] = max(_rel(x.weight, y.weight) for x, y in zip(a.layers, b.layers))
    return out


def _study(tmp: Path, model: str) -> Path:
    """The quickstart with ``model`` and short training (what is trained does not matter here)."""
    raw = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    raw["name"], raw["model"] = f"{model}_check", {"name": model}
    for v in raw["variants"].values():
        v["epochs"] = 5
    path = tmp / f"{model}_check.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def units(dev: torch.device, chips: int, study: Path) -> dict[str, float]:
    """One work unit of every variant on the CPU and on ``dev``, through the workers' own
    code: per-chip metrics compared, and each device's speed (after a warm-up unit)."""
    spec = load_study(study, chips=chips)
    data = load_dataset(spec.data, spec.seed)
    states, ranges = {}, {}
    for v in spec.variants:
        trained = run_train_job(TrainJob(spec.model_of(v).name, spec.model_of(v).params, v.trainer.name, v.trainer.params, spec.seed), data)
        states[v.name], ranges[v.name] = trained.state_dict, trained.ranges
    payload = Payload.build(spec, states, data, ranges=ranges)
    contexts = (WorkerContext(payload, device="cpu"), WorkerContext(payload, device=str(dev)))
    same, total, loss_diff, seconds = 0, 0, 0.0, [0.0, 0.0]
    for vi in range(len(spec.variants)):
        unit = WorkUnit(vi, 0, 0, chips)
        results = []
        for k, ctx in enumerate(contexts):
            ctx.run(unit)  # warm-up: compilation, allocator
            t0 = time.perf_counter()
            results.append(ctx.run(unit))
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[k] += time.perf_counter() - t0
        ref, other = results
        same += int((ref.metrics["accuracy"] == other.metrics["accuracy"]).sum())
        total += ref.metrics["accuracy"].size
        loss_diff = max(loss_diff, float(np.abs(ref.metrics["loss"] - other.metrics["loss"]).max()))
    chip_times = chips * len(spec.times) * len(spec.variants) * len(spec.procedures)
    return {
        "chips": float(chips),
        "accuracy_identical_share": same / total,
        "loss_max_abs_diff": loss_diff,
        "one_test_image": 1.0 / len(data.y_test),
        "cpu_chip_times_per_s": chip_times / seconds[0],
        "device_chip_times_per_s": chip_times / seconds[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=64)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cuda", help="the device to compare with the CPU ('cpu' checks the script itself)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    dev = torch.device(args.device)
    torch.set_num_threads(1)  # the CPU side as a worker runs it
    result = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch": torch.__version__}
    result["state_and_reads"] = state_and_reads(dev, min(args.chips, 16))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result["mlp_unit"] = units(dev, args.chips, _study(Path(tmp), "mlp"))
        result["lenet_unit"] = units(dev, args.chips, _study(Path(tmp), "lenet"))
    for section, values in result.items():
        if isinstance(values, dict):
            print(section)
            for k, v in values.items():
                print(f"  {k:34s} {v:.6g}" if isinstance(v, float) and math.isfinite(v) else f"  {k:34s} {v}")
        else:
            print(f"{section}: {values}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
