"""The pipeline end to end: same numbers everywhere, chip identity, physics sanity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from mcstudy import load_study, open_results
from mcstudy.data import load_dataset
from mcstudy.execution import Payload, RunOptions, WorkerContext, WorkUnit, run_study
from mcstudy.hardware import BetweenChip, Population, Variation, WithinChip
from mcstudy.hardware.ideal import IdealDevice, IdealParams
from mcstudy.hardware.mapping import DifferentialPair, Encoding
from mcstudy.rng import chip_stream
from mcstudy.training import ModelCache, train_or_load

from .conftest import small_study


def _context(study: Path, cache: Path) -> WorkerContext:
    spec = load_study(study)
    data = load_dataset(spec.data, spec.seed)
    states = {
        v.name: train_or_load(spec.model.name, spec.model.params, v.trainer.name, v.trainer.params, data, spec.seed, ModelCache(cache)).state_dict
        for v in spec.variants
    }
    return WorkerContext(Payload.build(spec, states, data))


def test_same_numbers_on_every_executor_and_block_size(tmp_path: Path, cache_dir: Path) -> None:
    spec = load_study(small_study(tmp_path, chips=20))
    runs = {
        "serial-b8": RunOptions(tmp_path / "a.zarr", executor="serial", block_size=8, cache_dir=cache_dir, progress=False),
        "local2-b8": RunOptions(tmp_path / "b.zarr", executor="local", workers=2, block_size=8, cache_dir=cache_dir, progress=False),
        "serial-b3": RunOptions(tmp_path / "c.zarr", executor="serial", block_size=3, cache_dir=cache_dir, progress=False),
    }
    results = {}
    for name, opts in runs.items():
        run_study(spec, opts)
        results[name] = open_results(opts.out).load()
    ref = results["serial-b8"]
    assert not np.isnan(ref["accuracy"].values).any()
    for name, ds in results.items():
        np.testing.assert_array_equal(ds["accuracy"].values, ref["accuracy"].values, err_msg=name)
        np.testing.assert_array_equal(ds["loss"].values, ref["loss"].values, err_msg=name)
        assert ds["done"].values.all()
    assert results["serial-b3"]["accuracy"].encoding["chunks"][-1] == 3


def test_chip_identity_alone_and_in_a_block(tmp_path: Path, cache_dir: Path) -> None:
    ctx = _context(small_study(tmp_path, chips=64), cache_dir)
    alone = ctx.run(WorkUnit(0, 0, 17, 18))
    block = ctx.run(WorkUnit(0, 0, 0, 64))
    for m in ("accuracy", "loss"):
        np.testing.assert_array_equal(alone.metrics[m][..., 0], block.metrics[m][..., 17])
    assert not np.array_equal(block.metrics["loss"][..., 16], block.metrics["loss"][..., 17])


def test_chip_17_is_the_same_draw_for_every_variant(tmp_path: Path, cache_dir: Path) -> None:
    ctx = _context(small_study(tmp_path, chips=64), cache_dir)
    population = Population(
        IdealDevice(IdealParams()),
        DifferentialPair(Encoding()),
        Variation(within=WithinChip(sigma=0.05), between=BetweenChip(sigma=0.1)),
    )
    factors = []
    targets = []
    for net in ctx.networks.values():
        chips = population.program(net.nominal, chip_stream(ctx.spec.seed, "pcm", [17]))
        w = net.nominal[0]
        t, _ = population.mapping.targets(w, w.abs().max().expand_as(w), population.device.g_max)
        factors.append(chips.programmed(0, "g")[0] / t)
        targets.append(t)
        assert set(chips.draws()) == {"between_z"}
    both = (targets[0] > 0) & (targets[1] > 0)
    assert both.sum() > 100
    torch.testing.assert_close(factors[0][both], factors[1][both], rtol=1e-6, atol=0)
    assert factors[0][both].std() > 0.03  # the within-chip spread is there


def _sanity_study(tmp_path: Path) -> Path:
    path = small_study(tmp_path, chips=64)
    raw = yaml.safe_load(path.read_text())
    raw["hardware"]["ideal_pcm"] = {
        "device": {"name": "pcm", "prog_noise_scale": 0.0, "drift_scale": 0.0, "read_noise_scale": 0.0},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sanity(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> xr.Dataset:
    tmp = tmp_path_factory.mktemp("sanity")
    spec = load_study(_sanity_study(tmp))
    run_study(spec, RunOptions(tmp / "s.zarr", executor="serial", cache_dir=cache_dir, progress=False))
    return open_results(tmp / "s.zarr").load()


def test_without_variation_or_drift_every_chip_scores_the_float_accuracy(sanity: xr.Dataset) -> None:
    acc = sanity["accuracy"].sel(hardware="ideal_pcm")
    float_acc = sanity["float_accuracy"]
    assert (acc == float_acc).all()


def test_variation_spreads_accuracy(sanity: xr.Dataset) -> None:
    acc = sanity["accuracy"].sel(hardware="pcm", procedure="inference").isel(time=0)
    assert (acc.std("chip") > 0.002).all()


def test_drift_lowers_accuracy_and_compensation_recovers_it(sanity: xr.Dataset) -> None:
    acc = sanity["accuracy"].sel(hardware="pcm")
    mean = acc.mean("chip")
    hour, year = 3600.0, 365 * 86400.0
    plain = mean.sel(procedure="inference")
    comp = mean.sel(procedure="global_compensation")
    assert (plain.sel(time=year) <= plain.sel(time=hour)).all()
    assert (comp.sel(time=year) > plain.sel(time=year)).all()


def test_a_searched_architecture_is_deployed_and_recorded(tmp_path: Path, cache_dir: Path) -> None:
    path = small_study(tmp_path, chips=4)
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = {
        "unipolar": {"trainer": "uniform_unipolar", "epochs": 3, "bits": 3, "widths": [[16], [24]], "max_candidates": 1},
    }
    raw["hardware"] = {"rram": {"device": "rram", "mapping": {"kind": "unipolar", "bits": 3}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "arch.zarr"
    run_study(load_study(path), RunOptions(out, executor="serial", cache_dir=cache_dir, progress=False))
    ds = open_results(out)
    import json

    chosen = json.loads(ds.attrs["variant_models"])["unipolar"]
    assert chosen["model"] == "mlp" and chosen["hidden"] in ([16], [24])
    assert bool(ds["done"].all()) and float(ds["accuracy"].mean()) > 0.3


def test_a_quantised_network_deploys_with_its_trainers_range_and_the_store_says_so(tmp_path: Path, cache_dir: Path) -> None:
    """On ideal 3-bit devices, a QAT network split over four row tiles scores exactly its
    digital accuracy on every chip with the default weight scale (the trainer's range); the
    store records the scale asked for and the one each variant was programmed with."""
    path = small_study(tmp_path, chips=3)
    raw = yaml.safe_load(path.read_text())
    raw["times"] = ["20s"]
    raw["procedures"] = {"inference": {}}
    raw["variants"] = {"float": {"trainer": "standard", "epochs": 3}, "qat": {"trainer": "quantization_aware", "epochs": 3, "bits": 3}}
    ideal = {"device": "ideal", "mapping": {"kind": "differential", "bits": 3}, "tile": {"rows": 16, "cols": 16}}
    raw["hardware"] = {"auto": ideal, "tiles": {**ideal, "weight_scale": "tile"}, "layers": {**ideal, "weight_scale": "layer"}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "scale.zarr"
    run_study(load_study(path), RunOptions(out, executor="serial", cache_dir=cache_dir, progress=False))
    ds = open_results(out).load()
    assert list(ds["weight_scale"].values) == ["auto", "tile", "layer"]
    used = ds["weight_scale_used"].transpose("variant", "hardware").values.tolist()
    assert used == [["tile", "tile", "layer"], ["trained", "tile", "layer"]]
    qat = ds["accuracy"].sel(variant="qat", hardware="auto")
    assert (qat == ds["float_accuracy"].sel(variant="qat")).all()  # deployed is trained, on every chip
    assert (ds["loss"].sel(variant="qat", hardware="auto") == ds["float_loss"].sel(variant="qat")).all()
