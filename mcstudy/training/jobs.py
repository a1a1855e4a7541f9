"""Training jobs: one variant trained once (with one torch thread, so every executor
trains the same weights), or loaded from the cache when the same training was done
before; the cache key is the data, model, trainer and seed."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data import Dataset
from ..models import MODELS, build_model
from ..registries import LOSSES
from ..registry import NoParams, Params
from ..rng import mix64_int, tag_hash
from .base import TRAINERS, analog_weight_names
from .cache import ModelCache, training_key


TRAIN_THREADS = 1  # training always uses one torch thread, so every executor trains the same weights


@dataclass(frozen=True)
class TrainedModel:
    key: str
    state_dict: dict[str, torch.Tensor]
    history: list[float] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0
    model_params: Params | None = None  # the architecture, when the trainer chose it (a search)
    report: list[dict[str, Any]] = field(default_factory=list)  # what the trainer wants shown (candidates)
    ranges: dict[str, float] | None = None  # analog weight name -> full-scale weight the trainer used (None: none)


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
    loss: str = "cross_entropy"  # the study's loss (objectives.LOSSES)

    def key(self, data: Dataset) -> str:
        return training_key(data.digest, self.model, self.model_params, self.trainer, self.trainer_params, self.seed, self.loss)


def run_train_job(job: TrainJob, data: Dataset) -> TrainedModel:
    """Train one variant from scratch (no cache), with :data:`TRAIN_THREADS` torch threads."""
    t0 = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        trainer = TRAINERS.get(job.trainer).obj(job.trainer_params)
        trainer.loss = LOSSES.get(job.loss).obj(NoParams())
        outcome = trainer.run(job.model, job.model_params, data, training_seed(job.seed))
    finally:
        torch.set_num_threads(before)
    state = {k: v.detach().clone() for k, v in outcome.model.state_dict().items()}
    chosen = None if outcome.model_params == job.model_params else outcome.model_params
    return TrainedModel(job.key(data), state, outcome.history, False, time.perf_counter() - t0, chosen, outcome.report, outcome.ranges)


def load_trained(job: TrainJob, data: Dataset, cache: ModelCache) -> TrainedModel | None:
    """The cached result of ``job``, if there is a valid one."""
    hit = cache.load(job.key(data))
    if hit is None:
        return None
    state, info = hit
    chosen = None
    if info.get("model_params") is not None:
        try:
            chosen = MODELS.get(job.model).params.model_validate(info["model_params"], strict=False)
        except Exception:  # a foreign or corrupt record: retrain
            return None
    net = build_model(job.model, chosen or job.model_params, data.input_shape, data.n_classes)
    if not _compatible(net, state):
        return None
    ranges = info.get("ranges")
    if TRAINERS.get(job.trainer).obj.has_ranges() != (ranges is not None):
        return None  # a record from before the trainer recorded its ranges: retrain
    if ranges is not None and not _valid_ranges(ranges, analog_weight_names(net)):
        return None  # a foreign or corrupt record: retrain
    return TrainedModel(job.key(data), state, info.get("history", []), True, 0.0, chosen, info.get("report", []), ranges)


def save_trained(trained: TrainedModel, job: TrainJob, cache: ModelCache) -> None:
    chosen = None if trained.model_params is None else trained.model_params.model_dump(mode="json")
    cache.save(
        trained.key,
        trained.state_dict,
        {"model": job.model, "trainer": job.trainer, "history": trained.history, "seconds": trained.seconds,
         "model_params": chosen, "report": trained.report, "ranges": trained.ranges},
    )  # fmt: skip


def train_or_load(
    model: str, model_params: Params, trainer: str, trainer_params: Params, data: Dataset, seed: int, cache: ModelCache, loss: str = "cross_entropy"
) -> TrainedModel:
    """Train one variant, or load it from ``cache`` if the same training was done before."""
    job = TrainJob(model, model_params, trainer, trainer_params, seed, loss)
    hit = load_trained(job, data, cache)
    if hit is not None:
        return hit
    trained = run_train_job(job, data)
    save_trained(trained, job, cache)
    return trained


def _valid_ranges(ranges: Any, names: list[str]) -> bool:
    return (
        isinstance(ranges, dict) and set(ranges) == set(names)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in ranges.values())
    )  # fmt: skip


def _compatible(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ref = net.state_dict()
    return ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref)
