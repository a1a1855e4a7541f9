"""Training variants: named trainers, trained once and cached by hash."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..data import Dataset
from ..models import build_model
from ..registry import Params
from ..rng import mix64_int, tag_hash
from . import noise_injection  # noqa: F401  (register)
from .base import TRAINERS, Trainer, TrainParams, analog_weight_names
from .cache import ModelCache, default_cache_dir, training_key

__all__ = [
    "TRAINERS", "ModelCache", "TrainedModel", "Trainer", "TrainParams",
    "analog_weight_names", "default_cache_dir", "train_or_load", "training_key",
]  # fmt: skip


@dataclass(frozen=True)
class TrainedModel:
    key: str
    state_dict: dict[str, torch.Tensor]
    history: list[float] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0


def training_seed(seed: int) -> int:
    """The seed of every trainer in a study: variants share their initial weights, so
    comparisons between training recipes are paired from the start."""
    return mix64_int(seed ^ tag_hash("mcstudy.train")) & 0x7FFF_FFFF_FFFF_FFFF


def train_or_load(
    model: str, model_params: Params, trainer: str, trainer_params: Params, data: Dataset, seed: int, cache: ModelCache
) -> TrainedModel:
    """Train one variant, or load it from ``cache`` if the same training was done before."""
    key = training_key(data.digest, model, model_params, trainer, trainer_params, seed)
    net = build_model(model, model_params, data.input_shape, data.n_classes)
    hit = cache.load(key)
    if hit is not None:
        state, info = hit
        if _compatible(net, state):
            return TrainedModel(key, state, info.get("history", []), from_cache=True, seconds=0.0)
    t0 = time.perf_counter()
    tseed = training_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tseed)
        net = build_model(model, model_params, data.input_shape, data.n_classes)
    history = TRAINERS.get(trainer).obj(trainer_params).fit(net, data, tseed)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    seconds = time.perf_counter() - t0
    cache.save(key, state, {"model": model, "trainer": trainer, "history": history, "seconds": seconds})
    return TrainedModel(key, state, history, from_cache=False, seconds=seconds)


def _compatible(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ref = net.state_dict()
    return ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref)
