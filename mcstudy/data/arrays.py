"""Your own data: ``data: {dataset: arrays, path: data.npz}``.

The ``.npz`` file holds either ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and
optionally ``x_cal``, ``y_cal``: the calibration split on-chip procedures learn from), or
``x`` and ``y``, split like the built-in datasets (``test_fraction``,
``calibration_fraction``, stratified, from the study's seed). Inputs are any numeric
array ``(N, *input_shape)`` (read as float32, as given: scale them as your network
expects); labels are integers from 0 to the number of classes − 1, or, for a study whose
loss is a regression loss (``loss: mse``), float targets ``(N,)`` or ``(N, outputs)``
(``data.targets: values``, filled in from the loss). The file is read
without pickles (``allow_pickle=False``); its SHA-256 is part of the study's hash.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DataError
from .base import DATASETS, DatasetEntry, DataSpec, RawData

MAX_ARRAYS_BYTES = 8 << 30  # 8 GiB: a study's data file, refused beyond (README, "Limits")
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("x_cal", "y_cal")
POOLED_KEYS = ("x", "y")


def _array(arrays: Mapping[str, Any], key: str, source: str, labels: bool, values: bool = False) -> np.ndarray:
    what = f"{source}: array {key!r}"
    try:
        a = np.asarray(arrays[key])
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # object arrays need pickles, which are refused
        raise DataError(f"{what} cannot be read without pickles (numbers only): {e}") from None
    if labels and values:  # regression targets
        if a.dtype.kind not in "iuf" or a.ndim not in (1, 2):
            raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; regression targets are numbers of shape (N,) or (N, outputs)")
        if not np.all(np.isfinite(a)):
            raise DataError(f"{what} holds NaN or infinite targets")
        return a.astype(np.float32)
    if labels:
        if a.ndim != 1:
            raise DataError(f"{what} has shape {a.shape}; labels are one integer per sample, shape (N,)")
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a))):
            raise DataError(f"{what} has dtype {a.dtype}; labels are integers from 0")
        return a.astype(np.int64)
    if a.dtype.kind not in "iuf" or a.ndim < 2:
        raise DataError(f"{what} has dtype {a.dtype} and shape {a.shape}; inputs are numbers of shape (N, *input_shape)")
    return a.astype(np.float32)


def raw_from_arrays(arrays: Mapping[str, Any], source: str, values: bool = False) -> RawData:
    """Named arrays (``x_train``, ``y_train``, ``x_test``, ``y_test`` [, ``x_cal``,
    ``y_cal``], or ``x``, ``y``) as the data of a study; ``source`` names them in messages;
    ``values``: the y arrays are regression targets, not class labels."""
    keys = set(arrays)
    if set(SPLIT_KEYS) <= keys:
        x, y, xt, yt = (_array(arrays, k, source, k[0] == "y", values) for k in SPLIT_KEYS)
        cal = [k for k in OPTIONAL_KEYS if k in keys]
        if len(cal) == 1:
            raise DataError(f"{source}: has {cal[0]!r} without its pair; give both x_cal and y_cal, or neither")
        xc, yc = (_array(arrays, "x_cal", source, False), _array(arrays, "y_cal", source, True, values)) if cal else (None, None)
    elif set(POOLED_KEYS) <= keys:
        x, y = _array(arrays, "x", source, False), _array(arrays, "y", source, True, values)
        xt = yt = xc = yc = None
    else:
        raise DataError(
            f"{source}: holds {', '.join(sorted(map(str, keys))) or 'no arrays'}; expected x_train, y_train, x_test, y_test "
            "(and optionally x_cal, y_cal), or x and y"
        )
    labels = [a for a in (y, yt, yc) if a is not None]
    if values:
        widths = {a.shape[1:] for a in labels}
        if len(widths) > 1:
            raise DataError(f"{source}: the target arrays have different shapes per sample {sorted(widths)}")
        width = 1 if y.ndim == 1 else int(y.shape[1])
        return RawData(x=x, y=y, input_shape=tuple(x.shape[1:]), n_classes=width, x_test=xt, y_test=yt, x_cal=xc, y_cal=yc)
    if any(a.size and a.min() < 0 for a in labels):
        raise DataError(f"{source}: labels must be integers from 0 (found a negative label)")
    n_classes = int(max(int(a.max()) for a in labels if a.size) + 1) if any(a.size for a in labels) else 0
    return RawData(x=x, y=y, input_shape=tuple(x.shape[1:]), n_classes=n_classes, x_test=xt, y_test=yt, x_cal=xc, y_cal=yc)


def _load_arrays(spec: DataSpec) -> RawData:
    if spec.path is None:
        raise DataError("dataset 'arrays' needs data.path: your .npz file")
    path = Path(spec.path)
    try:
        arrays = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"data.path: no file {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"data.path: {path} is not a readable .npz file (numpy.savez): {e}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"data.path: {path} holds one array; save named arrays with numpy.savez(path, x_train=..., y_train=..., ...)")
    with arrays:
        return raw_from_arrays(arrays, f"data file {path}", spec.targets == "values")


def _load_factory(spec: DataSpec) -> RawData:
    """Your data from your function: named arrays, or a map-style ``torch.utils.data.Dataset``
    of ``(input, label)`` pairs (split like a built-in dataset)."""
    from ..models.factory import FactoryParams, call_factory

    if spec.factory is None:
        raise DataError("dataset 'factory' needs data.factory: 'package.module:function'")
    out = call_factory(FactoryParams(factory=spec.factory, kwargs=dict(spec.kwargs), source_dir=spec.source_dir, sha256=spec.sha256), "data.factory")
    source = f"data.factory {spec.factory!r}"
    values = spec.targets == "values"
    if isinstance(out, Mapping):
        return raw_from_arrays(out, source, values)
    if hasattr(out, "__len__") and hasattr(out, "__getitem__"):  # a map-style dataset
        try:
            pairs = [out[i] for i in range(len(out))]
            xs = np.stack([np.asarray(p[0], dtype=np.float32) for p in pairs])
            ys = np.stack([np.asarray(p[1], dtype=np.float32) for p in pairs]) if values else np.asarray([int(p[1]) for p in pairs])
        except Exception as e:
            raise DataError(f"{source}: its dataset does not give (input, {'target' if values else 'label'}) pairs of one shape: {type(e).__name__}: {e}") from None
        return raw_from_arrays({"x": xs, "y": ys}, source, values)
    raise DataError(f"{source} returned {type(out).__name__}; return a dict of arrays or a torch Dataset of (input, label) pairs")


DATASETS.register("arrays")(DatasetEntry(_load_arrays, values=True))
DATASETS.register("factory")(DatasetEntry(_load_factory, values=True))
