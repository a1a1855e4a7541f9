"""Training variants: named trainers, trained once and cached by hash."""

from __future__ import annotations

from . import hardware_aware, noise_injection, quantized, uniform_unipolar  # noqa: F401  (register)
from .base import TRAINERS, Trainer, TrainOutcome, TrainParams, analog_weight_names, init_model
from .cache import ModelCache, default_cache_dir, training_key
from .jobs import TRAIN_THREADS, TrainedModel, TrainJob, load_trained, run_train_job, save_trained, train_or_load, training_seed

__all__ = [
    "TRAINERS", "TRAIN_THREADS", "ModelCache", "TrainJob", "TrainOutcome", "TrainedModel", "Trainer", "TrainParams", "init_model",
    "analog_weight_names", "default_cache_dir", "load_trained", "run_train_job", "save_trained", "train_or_load", "training_key",
    "training_seed",
]  # fmt: skip
