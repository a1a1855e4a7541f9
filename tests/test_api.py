"""The Python API: mcstudy.run takes a study file, a dict or a loaded study and returns
the same store the command line writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import mcstudy

from .conftest import QUICKSTART, run_cli


def _raw(chips: int = 6) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["chips"] = chips
    raw["times"] = ["20s", "1d"]
    for v in raw["variants"].values():
        v["epochs"] = 3
    return raw


def test_run_a_study_dict_gives_the_command_lines_store(tmp_path: Path, cache_dir: Path) -> None:
    raw = _raw()
    ds = mcstudy.run(raw, out=tmp_path / "api.zarr", executor="serial", cache_dir=cache_dir)
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = run_cli("run", study, "--out", tmp_path / "cli.zarr", "--executor", "local", "--workers", "2", "--quiet", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    cli = mcstudy.open_results(tmp_path / "cli.zarr")
    assert ds.attrs["spec_hash"] == cli.attrs["spec_hash"]
    for m in ("accuracy", "loss"):
        np.testing.assert_array_equal(ds[m].values, cli[m].values)
    assert ds["accuracy"].sizes["chip"] == 6 and not np.isnan(ds["accuracy"].values).any()


def test_run_a_file_or_a_loaded_study_with_overrides(tmp_path: Path, cache_dir: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(_raw(chips=20), sort_keys=False))
    a = mcstudy.run(study, out=tmp_path / "a.zarr", chips=4, executor="serial", cache_dir=cache_dir)
    b = mcstudy.run(mcstudy.load_study(study), out=tmp_path / "b.zarr", chips=4, executor="serial", block_size=3, cache_dir=cache_dir)
    assert a.sizes["chip"] == b.sizes["chip"] == 4
    np.testing.assert_array_equal(a["accuracy"].values, b["accuracy"].values)
    c = mcstudy.run(study, out=tmp_path / "c.zarr", chips=4, seed=9, executor="serial", cache_dir=cache_dir)
    assert c.attrs["seed"] == 9 and not np.array_equal(a["accuracy"].values, c["accuracy"].values)


def test_bad_input_raises_a_message_naming_the_field_and_writes_nothing(tmp_path: Path) -> None:
    raw = _raw()
    raw["chips"] = -3
    with pytest.raises(mcstudy.SpecError, match=r"chips"):
        mcstudy.run(raw, out=tmp_path / "bad.zarr")
    with pytest.raises(mcstudy.McStudyError, match="a path, a dict or a StudySpec"):
        mcstudy.run(42, out=tmp_path / "bad.zarr")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.zarr").exists()


SCRIPT = """
import math, sys
import torch.nn as nn
import mcstudy


def build(input_shape, n_classes, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.GELU(), nn.Linear(width, n_classes))


study = {
    "name": "inline", "seed": 1, "chips": 3, "times": ["20s"],
    "model": {"factory": build, "kwargs": {"width": 12}},
    "variants": {"float": {"trainer": "standard", "epochs": 2}},
    "hardware": {"ideal": {"device": "ideal", "mapping": "differential"}},
}
if sys.argv[2] == "local":
    try:
        mcstudy.run(study, out=sys.argv[1], executor="local")
    except mcstudy.McStudyError as e:
        print("refused:", e)
else:
    ds = mcstudy.run(study, out=sys.argv[1])
    print("chips", ds.sizes["chip"], float(ds["float_accuracy"][0]) > 0.3)
"""


def test_a_function_of_the_notebook_is_a_factory_on_the_serial_executor(tmp_path: Path, cache_dir: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "inline.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "a.zarr"), "serial"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "chips 3 True" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "b.zarr"), "local"], capture_output=True, text=True, cwd=tmp_path)
    assert "refused: model.factory: a function defined in this notebook or script runs only in this process" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "b.zarr").exists()
