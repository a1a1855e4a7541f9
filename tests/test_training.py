"""Trainers and the trained-model cache."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from mcstudy.data import DataSpec, load_dataset
from mcstudy.models.zoo import MLPParams
from mcstudy.training import ModelCache, TrainParams, train_or_load
from mcstudy.training.noise_injection import NoiseInjectionParams

DATA = load_dataset(DataSpec(dataset="digits"), seed=0)
MLP = MLPParams(hidden=(32,))


def test_cache_trains_once_and_retrains_only_what_changed(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    a = train_or_load("mlp", MLP, "standard", TrainParams(epochs=2), DATA, 0, cache)
    b = train_or_load("mlp", MLP, "standard", TrainParams(epochs=2), DATA, 0, cache)
    assert not a.from_cache and b.from_cache and a.key == b.key
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = train_or_load("mlp", MLP, "standard", TrainParams(epochs=3), DATA, 0, cache)
    assert not c.from_cache and c.key != a.key
    d = train_or_load("mlp", MLP, "noise_injection", NoiseInjectionParams(epochs=2), DATA, 0, cache)
    assert not d.from_cache and d.key != a.key


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_or_load("mlp", MLP, "noise_injection", NoiseInjectionParams(epochs=2, clip=2.0), DATA, 5, ModelCache(tmp_path / "a"))
    b = train_or_load("mlp", MLP, "noise_injection", NoiseInjectionParams(epochs=2, clip=2.0), DATA, 5, ModelCache(tmp_path / "b"))
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_weight_clipping_bounds_the_weights(tmp_path: Path) -> None:
    t = train_or_load("mlp", MLP, "noise_injection", NoiseInjectionParams(epochs=3, clip=1.5, mode="multiplicative"), DATA, 0, ModelCache(tmp_path))
    for name in ("1.weight", "3.weight"):
        w = t.state_dict[name]
        # after the last step every weight lies within 1.5 std of its layer (the std of the clipped tensor is smaller)
        assert w.abs().max() <= 1.5 * w.std() * 1.2


class _Evil:
    def __reduce__(self):  # runs os.system on a plain pickle load
        return (os.system, ("touch pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_cache_file_is_not_executed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = ModelCache(tmp_path / "cache")
    t = train_or_load("mlp", MLP, "standard", TrainParams(epochs=1), DATA, 0, cache)
    (tmp_path / "cache" / f"{t.key}.pt").write_bytes(pickle.dumps({"w": _Evil()}))
    again = train_or_load("mlp", MLP, "standard", TrainParams(epochs=1), DATA, 0, cache)
    assert not again.from_cache  # refused and retrained
    assert not (tmp_path / "pwned").exists()
