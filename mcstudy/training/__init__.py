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
from . import hardware_aware, noise_injection, quantized  # noqa: F401  (register)
from .base import TRAINERS, Trainer, TrainParams, analog_weight_names
from .cache import ModelCache, default_cache_dir, training_key

__all__ = [
    "TRAINERS", "ModelCache", "TrainJob", "TrainedModel", "Trainer", "TrainParams",
    "analog_weight_names", "default_cache_dir", "load_trained", "run_train_job", "save_trained", "train_or_load", "training_key",
]  # fmt: skip

TRAIN_THREADS = 1  # training always uses one torch thread, so every executor trains the same weights


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


@dataclass(frozen=True)
class TrainJob:
    """Everything one training variant depends on (besides the data)."""

    model: str
    model_params: Params
    trainer: str
    trainer_params: Params
    seed: int

    def key(self, data: Dataset) -> str:
        return training_key(data.digest, self.model, self.model_params, self.trainer, self.trainer_params, self.seed)


def run_train_job(job: TrainJob, data: Dataset) -> TrainedModel:
    """Train one variant from scratch (no cache), with :data:`TRAIN_THREADS` torch threads."""
    t0 = time.perf_counter()
    tseed = training_seed(job.seed)
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tseed)
            net = build_model(job.model, job.model_params, data.input_shape, data.n_classes)
        history = TRAINERS.get(job.trainer).obj(job.trainer_params).fit(net, data, tseed)
    finally:
        torch.set_num_threads(before)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return TrainedModel(job.key(data), state, history, from_cache=False, seconds=time.perf_counter() - t0)


def load_trained(job: TrainJob, data: Dataset, cache: ModelCache) -> TrainedModel | None:
    """The cached result of ``job``, if there is a valid one."""
    hit = cache.load(job.key(data))
    if hit is None:
        return None
    state, info = hit
    if not _compatible(build_model(job.model, job.model_params, data.input_shape, data.n_classes), state):
        return None
    return TrainedModel(job.key(data), state, info.get("history", []), from_cache=True, seconds=0.0)


def save_trained(trained: TrainedModel, job: TrainJob, cache: ModelCache) -> None:
    cache.save(trained.key, trained.state_dict, {"model": job.model, "trainer": job.trainer, "history": trained.history, "seconds": trained.seconds})


def train_or_load(
    model: str, model_params: Params, trainer: str, trainer_params: Params, data: Dataset, seed: int, cache: ModelCache
) -> TrainedModel:
    """Train one variant, or load it from ``cache`` if the same training was done before."""
    job = TrainJob(model, model_params, trainer, trainer_params, seed)
    hit = load_trained(job, data, cache)
    if hit is not None:
        return hit
    trained = run_train_job(job, data)
    save_trained(trained, job, cache)
    return trained


def _compatible(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ref = net.state_dict()
    return ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref)
