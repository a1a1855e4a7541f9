"""Datasets: the spec section, the loaded arrays and the deterministic splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, PositiveInt

from ..errors import DataError
from ..registry import Params
from ..registries import DATASETS  # noqa: F401  (re-exported where it always was)


class DataSpec(Params):
    """The ``data:`` section of a study file."""

    dataset: str = Field("digits", description="a registered dataset: digits, mnist5k, mnist1d, mnist, fashion_mnist, emnist, cifar10, har")
    root: str | None = Field(None, description="directory of local dataset files (mnist, fashion_mnist, emnist, cifar10, har)")
    subset: str | None = Field(None, description="EMNIST split, e.g. 'balanced', 'digits', 'letters'")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="test share, for datasets without an official test split")
    calibration_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the training pool held out for on-chip calibration"
    )
    max_train: PositiveInt | None = Field(None, description="cap on training samples (after the split)")
    max_test: PositiveInt | None = Field(None, description="cap on test samples (after the split)")
    path: str | None = Field(None, description="dataset 'arrays': your .npz file (relative to the study file)")
    sha256: str | None = Field(
        None, description="dataset 'arrays' or 'factory': the SHA-256 of the file or of the function's module; filled in when the study is read (a changed file is another study), or set it to pin the file"
    )
    factory: str | None = Field(None, description="dataset 'factory': your function 'package.module:function' returning named arrays or a torch Dataset")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="dataset 'factory': keyword arguments of the function")
    source_dir: str | None = Field(None, description="dataset 'factory': where its module is imported from first: the study file's directory (filled in)")
    targets: Literal["classes", "values"] = Field(
        "classes", description="class labels (integers from 0), or regression target values: filled in from the study's loss"
    )


def holds_values(y: np.ndarray) -> bool:
    """Whether ``y`` holds regression targets (floats) rather than class labels (integers):
    loaders give float32 targets only under ``data.targets: values``."""
    return y.dtype.kind == "f"


@dataclass(frozen=True)
class RawData:
    """What a loader returns: float32 inputs (images scaled to [0, 1]; other data as the
    dataset defines it), integer labels from 0 — or float32 regression targets ``(N,)`` or
    ``(N, K)``, where ``n_classes`` is the network's output width (1 or K)."""

    x: np.ndarray  # (N, *input_shape) float32
    y: np.ndarray  # (N,) int64, or float32 targets (N,) / (N, K)
    input_shape: tuple[int, ...]
    n_classes: int
    x_test: np.ndarray | None = None  # official test split, when the dataset has one
    y_test: np.ndarray | None = None
    x_cal: np.ndarray | None = None  # a calibration split of its own, when the data has one
    y_cal: np.ndarray | None = None


@dataclass(frozen=True)
class Dataset:
    """Train / calibration / test splits. The test split is only ever used to score chips;
    on-chip procedures calibrate on the calibration split."""

    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str = field(default="")

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_cal)} calibration / "
            f"{len(self.y_test)} test, input {self.input_shape}, "
            + (f"{self.n_classes} regression output(s)" if holds_values(self.y_train) else f"{self.n_classes} classes")
        )


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[[DataSpec], RawData]
    needs_root: bool = False
    extra: str | None = None  # pip extra that provides it
    values: bool = False  # can hold regression targets (data.targets: values), not only class labels




def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held-out) with ``fraction`` of every class held out (of all samples,
    for regression targets)."""
    held: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    groups = [np.arange(len(y))] if holds_values(y) else [np.flatnonzero(y == cls) for cls in np.unique(y)]
    for idx in groups:
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        rest.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(rest), cat(held)


def make_splits(name: str, raw: RawData, spec: DataSpec, seed: int) -> Dataset:
    """Deterministic, stratified train / calibration / test split from the study seed."""
    rng = np.random.default_rng([seed, 0x5EED_DA7A])
    if raw.x_test is None or raw.y_test is None:
        pool_idx, test_idx = _stratified_split(raw.y, spec.test_fraction, rng)
        x_pool, y_pool = raw.x[pool_idx], raw.y[pool_idx]
        x_test, y_test = raw.x[test_idx], raw.y[test_idx]
    else:
        x_pool, y_pool, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    if raw.x_cal is not None and raw.y_cal is not None:  # the data's own calibration split
        n_pool = len(y_pool)
        x_pool, y_pool = np.concatenate([x_pool, raw.x_cal]), np.concatenate([y_pool, raw.y_cal])
        train_idx, cal_idx = np.arange(n_pool), np.arange(n_pool, len(y_pool))
    else:
        train_idx, cal_idx = _stratified_split(y_pool, spec.calibration_fraction, rng)
    if spec.max_train is not None and len(train_idx) > spec.max_train:
        train_idx = np.sort(rng.choice(train_idx, spec.max_train, replace=False))
    if spec.max_test is not None and len(y_test) > spec.max_test:
        keep = np.sort(rng.choice(len(y_test), spec.max_test, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    parts = dict(
        x_train=x_pool[train_idx], y_train=y_pool[train_idx],
        x_cal=x_pool[cal_idx], y_cal=y_pool[cal_idx],
        x_test=x_test, y_test=y_test,
    )  # fmt: skip
    for key, what in (("x_train", "training"), ("x_test", "test")):
        if len(parts[key]) == 0:
            raise DataError(
                f"dataset {name!r}: the split leaves no {what} samples (data.test_fraction {spec.test_fraction}, "
                f"calibration_fraction {spec.calibration_fraction}, {len(raw.y)} samples in all)"
            )
    values = holds_values(raw.y)
    parts = {k: np.ascontiguousarray(v, dtype=np.float32 if k[0] == "x" or values else np.int64) for k, v in parts.items()}
    h = hashlib.sha256()
    for k in sorted(parts):
        h.update(k.encode())
        h.update(parts[k].tobytes())
    return Dataset(name=name, input_shape=raw.input_shape, n_classes=raw.n_classes, digest=h.hexdigest(), **parts)
