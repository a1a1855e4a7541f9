"""MNIST, Fashion-MNIST and EMNIST from local IDX files (optionally gzipped).

The study names a directory (``data.root``) holding the four files of the dataset with
their usual names, e.g. ``train-images-idx3-ubyte.gz``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .base import DATASETS, DatasetEntry, DataSpec, RawData

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


MAX_FILE_BYTES = 1 << 30  # an IDX file's declared data: EMNIST's largest split (byclass, train) is 0.55 GB


def read_idx(path: Path, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Read one IDX file (LeCun's format: magic, big-endian dims, raw data), gzipped or not.

    The header is read and checked first — magic number, dimensions, and the data size it
    declares against ``max_bytes`` and, for a plain file, against the file's size — then
    exactly the declared bytes are read from the stream, so a small file that declares (or
    decompresses to) gigabytes is refused before they are read."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise DataError(f"{path} is truncated or has no dimensions (header)")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            if 0 in dims:
                raise DataError(f"{path} holds no data: its dimensions are {dims}")
            expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
            if expected > max_bytes:
                raise DataError(f"{path} declares {expected:,} data bytes (dimensions {dims}); at most {max_bytes:,} are read")
            if path.suffix != ".gz" and path.stat().st_size != 4 + 4 * ndim + expected:
                raise DataError(f"{path} holds {path.stat().st_size - 4 - 4 * ndim:,} data bytes, its header says {expected:,}")
            data = f.read(expected)
            if len(data) != expected or f.read(1):
                raise DataError(f"{path} holds {'fewer' if len(data) != expected else 'more'} data bytes than its header says ({expected:,})")
    except DataError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        p = root / name
        if p.is_file():
            return p
    raise DataError(f"missing dataset file {root / stem} (or {stem}.gz) under data.root")


def _load_pair(root: Path, prefix: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find(root, f"{prefix}{part}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}{part}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path} has {images.ndim} dimensions, expected 3 (N, rows, cols)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path} holds {labels.shape} labels for {len(images)} images in {images_path}")
    return images, labels.astype(np.int64)


def _root(spec: DataSpec) -> Path:
    if spec.root is None:
        raise DataError(f"dataset {spec.dataset!r} reads local files: set data.root to their directory")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a directory")
    return root


def _make_idx_loader(prefix_of: Callable[[DataSpec], str], transpose: bool) -> Callable[[DataSpec], RawData]:
    def load(spec: DataSpec) -> RawData:
        root = _root(spec)
        prefix = prefix_of(spec)
        x_tr, y_tr = _load_pair(root, prefix, "train")
        x_te, y_te = _load_pair(root, prefix, "test" if prefix else "t10k")
        if transpose:  # EMNIST stores images column-major
            x_tr, x_te = x_tr.transpose(0, 2, 1), x_te.transpose(0, 2, 1)
        offset = min(int(y_tr.min()), int(y_te.min()))  # EMNIST letters count from 1
        y_tr, y_te = y_tr - offset, y_te - offset
        n_classes = int(max(y_tr.max(), y_te.max())) + 1
        shape = (1, *x_tr.shape[1:])

        def scale(a: np.ndarray) -> np.ndarray:
            return (a.astype(np.float32) / 255.0).reshape(-1, *shape)

        return RawData(scale(x_tr), y_tr, shape, n_classes, scale(x_te), y_te)

    return load


def _emnist_prefix(spec: DataSpec) -> str:
    if not spec.subset:
        raise DataError("dataset 'emnist' needs data.subset (balanced, byclass, bymerge, digits, letters or mnist)")
    return f"emnist-{spec.subset}-"


DATASETS.register("mnist")(DatasetEntry(_make_idx_loader(lambda s: "", False), needs_root=True))
DATASETS.register("fashion_mnist")(DatasetEntry(_make_idx_loader(lambda s: "", False), needs_root=True))
DATASETS.register("emnist")(DatasetEntry(_make_idx_loader(_emnist_prefix, True), needs_root=True))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an uint8 array as an IDX file (gzipped if the name ends in .gz); for tests and tools."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    data = header + a.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
