"""A study's loss and headline metric by registry name: top-k accuracy, regression errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import mcstudy
from mcstudy.objectives import Objective
from mcstudy.registries import LOSSES, SCORES
from mcstudy.registry import NoParams

from .conftest import run_cli


def test_metrics_follow_their_definitions() -> None:
    """Each metric against its formula, written out here: cross-entropy as torch's, top-k
    as "the label among the k largest outputs", MSE and MAE averaged over outputs."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    top3 = Objective(metric="top_k", metric_params=SCORES.get("top_k").params(k=3))
    sums = top3.sums(logits, labels)
    assert top3.metrics == ("accuracy", "loss", "top3_accuracy")
    order = logits.argsort(-1, descending=True)
    rank = (order == labels.view(1, -1, 1)).float().argmax(-1)  # position of the label among the outputs
    torch.testing.assert_close(sums["top3_accuracy"], (rank < 3).sum(1).double())
    torch.testing.assert_close(sums["accuracy"], (rank == 0).sum(1).double())
    # the recorded loss sums each sample's float32 cross-entropy in float64: against the
    # float64 formula, to a few float32 roundings per sample (not torch's float32 sum,
    # whose own rounding differs between CPU capabilities)
    ce = torch.stack([F.cross_entropy(logits[c].double(), labels, reduction="sum") for c in range(3)])
    torch.testing.assert_close(sums["loss"], ce, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    assert (sums["top3_accuracy"] >= sums["accuracy"]).all()
    # top-k with k at least the number of outputs: every sample is found
    all_k = Objective(metric="top_k", metric_params=SCORES.get("top_k").params(k=10)).sums(logits, labels)
    assert torch.equal(all_k["top10_accuracy"], torch.full((3,), 50.0, dtype=torch.float64))

    outputs, targets = torch.randn(2, 40, 3, generator=g), torch.randn(40, 3, generator=g)
    reg = Objective(loss="mse", metric="mae")
    assert reg.metrics == ("loss", "mae") and not reg.classification
    sums = reg.sums(outputs, targets)
    # each sample's float32 error, summed over samples in float64 (a float32 sum rounds differently per CPU capability)
    torch.testing.assert_close(sums["loss"], ((outputs - targets) ** 2).mean(-1).double().sum(1))
    torch.testing.assert_close(sums["mae"], (outputs - targets).abs().mean(-1).double().sum(1))
    one = Objective(loss="mse", metric="mse").sums(outputs[..., :1], targets[:, 0])  # one target per sample, one output
    torch.testing.assert_close(one["mse"], ((outputs[..., 0] - targets[:, 0]) ** 2).double().sum(1))
    with pytest.raises(ValueError, match="one value per sample"):
        LOSSES.get("mse").obj(NoParams())(outputs[0], targets[:, 0])


def _regression_study(root: Path, **changes: object) -> Path:
    """A regression on arrays: y = tanh(x·w / 2) + noise, an MLP with one output."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    y = (np.tanh(x @ rng.normal(size=6) / 2) + 0.05 * rng.normal(size=500)).astype(np.float32)
    np.savez(root / "reg.npz", x=x, y=y)
    raw = {
        "name": "reg", "seed": 1, "chips": 6, "times": ["20s", "1d"],
        "data": {"dataset": "arrays", "path": "reg.npz"}, "model": {"name": "mlp", "hidden": [16]},
        "loss": "mse", "metric": "mae",
        "variants": {"float": {"trainer": "standard", "epochs": 15}, "noisy": {"trainer": "noise_injection", "epochs": 15, "sigma": 0.05}},
        "hardware": {"ideal": {"device": "ideal"}, "pcm": {"device": "pcm"}},
        "procedures": {"inference": {}, "global": {"kind": "drift_compensation"}},
        **changes,
    }  # fmt: skip
    path = root / "reg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_regression_study_trains_for_mse_and_scores_mae(tmp_path: Path, cache_dir: Path) -> None:
    study = _regression_study(tmp_path)
    out = tmp_path / "reg.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "input (6,), 1 regression output(s)" in r.stderr, r.stderr
    assert "reg: mae over chips (yield = share at most 1 % above float)" in r.stdout, r.stdout
    ds = mcstudy.open_results(out)
    assert "accuracy" not in ds and ds.attrs["headline_metric"] == "mae" and ds["mae"].attrs["better"] == "lower"
    assert {"loss", "mae", "float_loss", "float_mae"} <= set(ds.data_vars)
    var_y = float(np.var(np.load(tmp_path / "reg.npz")["y"]))
    assert float(ds["float_loss"].sel(variant="float")) < 0.5 * var_y  # it learnt the function
    ideal = ds.sel(hardware="ideal")  # ideal devices compute the trained network
    for m in ("loss", "mae"):
        np.testing.assert_allclose(ideal[m].values, np.broadcast_to(ds[f"float_{m}"].values[:, None, None, None], ideal[m].shape), rtol=1e-5)
    pcm = ds.sel(hardware="pcm", procedure="inference")
    assert float(pcm["mae"].sel(time=86400.0).load().median()) > float(pcm["mae"].sel(time=20.0).load().median())  # drift hurts
    from mcstudy.analysis import paired_table
    from mcstudy.store import Location
    from mcstudy.verify import verify

    table = paired_table(ds.sel(hardware=["pcm"]), "procedure", "global", "inference")  # the rows `mcstudy compare` prints
    assert table.attrs["metric"] == "mae" and table.attrs["units"] == "target units"
    assert (table["wins"][table["time"] == "1 d"] > 0.5).all()  # compensation lowers the error on most chips after a day
    assert verify(Location(out)).intact


def test_top_k_accuracy_is_recorded_beside_accuracy(tmp_path: Path, cache_dir: Path) -> None:
    raw = {
        "name": "top3", "seed": 2, "chips": 4, "times": ["20s"], "model": {"name": "mlp", "hidden": [16]},
        "metric": {"kind": "top_k", "k": 3},
        "variants": {"float": {"trainer": "standard", "epochs": 3}}, "hardware": {"pcm": {"device": "pcm"}},
    }  # fmt: skip
    ds = mcstudy.run(raw, out=tmp_path / "top3.zarr", executor="serial", cache_dir=cache_dir, progress=False)
    assert ds.attrs["headline_metric"] == "top3_accuracy"
    assert (ds["top3_accuracy"] >= ds["accuracy"]).all() and float(ds["float_top3_accuracy"][0]) > float(ds["float_accuracy"][0])
    from mcstudy.spec import parse_study

    named, plain = parse_study(yaml.safe_dump(raw)), parse_study(yaml.safe_dump({k: v for k, v in raw.items() if k != "metric"}))
    assert "objective" in named.canonical() and "objective" not in plain.canonical()  # the default keeps older studies' hashes
    assert named.hash != plain.hash


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"metric": "accuracy"}, "metric", "'accuracy' scores class labels, but loss 'mse' does not; with it use mae, mse"),
        ({"data": {"dataset": "digits"}}, "data.dataset", "'digits' holds class labels; loss 'mse' needs regression targets"),
        ({"procedures": {"tune": {"kind": "self_tuning"}}}, "procedures.tune", "learns from class labels"),
        ({"loss": "hinge"}, "loss.kind", "hinge"),
        ({"metric": {"kind": "top_k", "k": 0}}, "metric.k", ""),
    ],
)
def test_an_objective_that_does_not_fit_is_refused_naming_the_field(tmp_path: Path, changes: dict, field: str, message: str) -> None:
    """Each case is a SpecError naming its field (the command line turns one into exit code 2:
    :func:`test_a_mismatched_metric_exits_2_and_writes_nothing`)."""
    with pytest.raises(mcstudy.SpecError) as e:
        mcstudy.load_study(_regression_study(tmp_path, **changes))
    assert any(path == field and message in text for path, text in e.value.problems), e.value.problems


def test_a_mismatched_metric_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    r = run_cli("run", _regression_study(tmp_path, metric="accuracy"), "--out", out, "--executor", "serial")
    assert r.returncode == 2 and "metric: 'accuracy' scores class labels" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_ties_yield_and_wins_of_errors_at_any_scale() -> None:
    """Top-k breaks ties as argmax does (top-1 is accuracy, on outputs full of ties); an
    error's yield and paired wins hold for errors of any size (1e-5 as for 1)."""
    import xarray as xr

    from mcstudy.analysis.stats import paired_difference, passing_chips

    g = torch.Generator().manual_seed(1)
    outputs = torch.randint(0, 3, (2, 400, 6), generator=g).float()  # quantised outputs: many ties
    labels = torch.randint(0, 6, (400,), generator=g)
    top1 = Objective(metric="top_k", metric_params=SCORES.get("top_k").params(k=1)).sums(outputs, labels)
    assert torch.equal(top1["top1_accuracy"], top1["accuracy"])
    assert SCORES.get("top_k").obj(SCORES.get("top_k").params(k=6)).problem(6) is not None

    for scale in (1e-5, 1.0):
        chips = np.linspace(1.0, 1.2, 21) * scale  # 0 .. 20 % above the float model's error
        metric = xr.DataArray(chips[None, :], dims=("cell", "chip"), attrs={"better": "lower"})
        k, n = passing_chips(metric, scale * 1.01)
        assert int(k[0]) == 2 and int(n[0]) == 21  # 1.00 and 1.01 (up to float rounding) pass at 1 %
        ds = xr.Dataset({"mse": xr.DataArray(np.stack([chips, chips * 1.1]), dims=("procedure", "chip"), attrs={"better": "lower"})})
        ds = ds.assign_coords(procedure=["a", "b"])
        d = paired_difference(ds, "procedure", "a", "b", metric="mse")
        assert float(d["wins"]) == 1.0 and float(d["ties"]) == 0.0  # a's error is lower on every chip


def test_a_network_of_the_wrong_width_or_a_top_k_that_finds_everything_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "wide.py").write_text("import torch.nn as nn\n\ndef build(input_shape, n_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(6, 3))\n")
    study = _regression_study(tmp_path, model={"factory": "wide:build"})
    with pytest.raises(mcstudy.McStudyError, match=r"outputs of shape \(3,\) per sample; the data has 1 regression target\(s\)"):
        mcstudy.run(study, out=tmp_path / "a.zarr", executor="serial", cache_dir=cache_dir, progress=False)
    raw = {
        "name": "top10", "chips": 2, "times": ["20s"], "model": "mlp", "metric": {"kind": "top_k", "k": 10},
        "variants": {"f": {"trainer": "standard", "epochs": 1}}, "hardware": {"pcm": {"device": "pcm"}},
    }  # fmt: skip
    with pytest.raises(mcstudy.SpecError, match="every chip would score 100 %"):
        mcstudy.run(raw, out=tmp_path / "b.zarr", executor="serial", cache_dir=cache_dir, progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    with pytest.raises(ValueError, match="3 values per sample, but the network has 2 outputs"):
        LOSSES.get("mse").obj(NoParams())(torch.zeros(4, 2), torch.zeros(4, 3))
