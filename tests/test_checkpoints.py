"""Your trained weights: a checkpoint deployed as it is (trainer: pretrained) or as the
start of training (init:), read with weights_only=True, its content in the hash."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mcstudy import load_study, open_results
from mcstudy.data import DataSpec, load_dataset
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams

from .conftest import run_cli


def _checkpoint(path: Path, hidden: tuple[int, ...] = (16,), steps: int = 60) -> torch.nn.Module:
    """A small MLP trained on digits outside mcstudy (as a user's own script would), saved
    as a state dict."""
    data = load_dataset(DataSpec(), 1)
    torch.manual_seed(0)
    net = build_model("mlp", MLPParams(hidden=hidden), data.input_shape, data.n_classes)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), path)
    return net.eval()


def _study(tmp_path: Path, variant: dict, device: str = "ideal") -> Path:
    raw = {
        "name": "ckpt", "seed": 1, "chips": 3, "times": ["20s"], "model": {"name": "mlp", "hidden": [16]},
        "variants": {"mine": variant}, "hardware": {"chips": {"device": device, "mapping": "differential"}},
    }  # fmt: skip
    path = tmp_path / "ckpt.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_checkpoint_deploys_as_it_is(tmp_path: Path, cache_dir: Path) -> None:
    net = _checkpoint(tmp_path / "mine.pt")
    study = _study(tmp_path, {"trainer": "pretrained", "checkpoint": "mine.pt"})
    r = run_cli("run", study, "--out", tmp_path / "out.zarr", "--executor", "serial", "--quiet", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    ds = open_results(tmp_path / "out.zarr")
    data = load_dataset(DataSpec(), 1)
    with torch.no_grad():
        own = float((net(torch.from_numpy(data.x_test)).argmax(1) == torch.from_numpy(data.y_test)).float().mean())
    assert float(ds["float_accuracy"].sel(variant="mine")) == np.float32(own)
    np.testing.assert_array_equal(ds["accuracy"].values, np.float32(own))  # ideal devices: every chip is the module


def test_init_starts_training_from_the_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    net = _checkpoint(tmp_path / "mine.pt")
    from mcstudy.training import ModelCache, train_or_load

    spec = load_study(_study(tmp_path, {"trainer": "standard", "epochs": 1, "lr": 1e-12, "init": "mine.pt"}))
    v = spec.variants[0]
    assert v.trainer.params.init == str(tmp_path / "mine.pt") and len(v.trainer.params.init_sha256) == 64
    data = load_dataset(spec.data, spec.seed)
    trained = train_or_load("mlp", spec.model.params, v.trainer.name, v.trainer.params, data, spec.seed, ModelCache(cache_dir))
    for k, w in net.state_dict().items():  # a learning rate of 1e-12 leaves the checkpoint's weights
        torch.testing.assert_close(trained.state_dict[k], w, rtol=0, atol=1e-9)


def test_the_checkpoints_content_is_part_of_the_hash(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "mine.pt", steps=5)
    study = _study(tmp_path, {"trainer": "pretrained", "checkpoint": "mine.pt"})
    before = load_study(study).hash
    _checkpoint(tmp_path / "mine.pt", steps=6)  # other weights under the same name
    assert load_study(study).hash != before


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """file name -> (what it holds, the message expected)."""
    _checkpoint(tmp_path / "narrow.pt", hidden=(8,), steps=1)
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    torch.save(argparse.Namespace(weight=torch.zeros(2)), tmp_path / "object.pt")  # a pickled class: refused by weights_only
    (tmp_path / "text.pt").write_text("not a checkpoint")
    sd = build_model("mlp", MLPParams(hidden=(16,)), (1, 8, 8), 10).state_dict()
    sd["extra.weight"] = torch.zeros(2)
    missing = next(iter(sd))
    del sd[missing]
    torch.save(sd, tmp_path / "keys.pt")
    return {
        "narrow.pt": ("a checkpoint of another width", "does not match the study's model"),
        "list.pt": ("a list", "is not a state dict"),
        "object.pt": ("a pickled object", "weights_only=True"),
        "text.pt": ("text", "cannot be read as a state dict"),
        "keys.pt": ("a missing and an unexpected key", "unexpected extra.weight"),
    }


def test_a_checkpoint_that_does_not_fit_exits_2_naming_it_and_writes_nothing(tmp_path: Path, cache_dir: Path) -> None:
    """Every bad file is an error naming it and what is wrong (in this process, as
    ``mcstudy.run`` raises it); through the command line, exit code 2 and no traceback."""
    import mcstudy

    for name, (_, message) in _bad_files(tmp_path).items():
        study = _study(tmp_path, {"trainer": "pretrained", "checkpoint": name})
        out = tmp_path / f"{name}.zarr"
        with pytest.raises(mcstudy.McStudyError) as e:
            mcstudy.run(study, out=out, executor="serial", cache_dir=cache_dir, progress=False)
        assert message in str(e.value) and name in str(e.value), (name, str(e.value))
        assert not out.exists()
    out = tmp_path / "cli.zarr"
    r = run_cli("run", _study(tmp_path, {"trainer": "pretrained", "checkpoint": "keys.pt"}), "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2 and "unexpected extra.weight" in r.stderr and "keys.pt" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    for field, entry in (("checkpoint", {"trainer": "pretrained", "checkpoint": "missing.pt"}), ("init", {"trainer": "standard", "init": "missing.pt"})):
        with pytest.raises(mcstudy.SpecError) as e:
            load_study(_study(tmp_path, entry))
        assert (f"variants.mine.{field}", "no such checkpoint file") in [(p, m.split(";")[0]) for p, m in e.value.problems], e.value.problems
