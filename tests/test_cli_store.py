"""The real command line end to end, and the store's refusal to mix studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from mcstudy import load_study, open_results
from mcstudy.execution import RunOptions, run_study

from .conftest import run_cli, small_study


def test_quickstart_through_the_cli(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=16)
    r = run_cli("run", study, "--workers", "2", "--block-size", "8", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr
    store = tmp_path / "results" / "quickstart.zarr"  # the default output path
    assert store.is_dir()
    assert "median" in r.stdout and "yield" in r.stdout and "global_compensation" in r.stdout
    ds = open_results(store)
    assert dict(ds.sizes) == {"variant": 2, "hardware": 1, "procedure": 2, "time": 4, "chip": 16}
    assert list(ds["variant"].values) == ["float", "noise_injection"]
    assert list(ds["procedure"].values) == ["inference", "global_compensation"]
    assert list(ds["time"].values) == [20.0, 3600.0, 86400.0, 31536000.0]
    assert ds["time"].attrs["units"] == "s"
    assert list(ds["time_label"].values) == ["20 s", "1 h", "1 d", "1 y"]
    assert ds["accuracy"].attrs["units"] == "1"
    assert bool(ds["done"].all())
    assert not np.isnan(ds["accuracy"].values).any()
    assert 0.5 < float(np.median(ds["accuracy"].values)) <= 1.0
    spec = load_study(study)
    assert ds.attrs["spec_hash"] == spec.hash and ds.attrs["seed"] == spec.seed
    assert ds.attrs["study_file"] == study.read_text()
    versions = json.loads(ds.attrs["versions"])
    assert {"python", "torch", "numpy", "xarray", "zarr", "mcstudy"} <= set(versions)
    assert set(ds["float_accuracy"].dims) == {"variant"}
    assert ds["accuracy"].encoding["chunks"] == (1, 1, 2, 4, 8)


def test_rerun_resumes_and_different_study_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=6)
    out = tmp_path / "s.zarr"
    spec = load_study(study)
    first = run_study(spec, RunOptions(out, executor="serial", block_size=3, cache_dir=cache_dir, progress=False))
    assert first.units_run == first.units_total == 4 and not first.resumed
    before = open_results(out).load()
    again = run_study(spec, RunOptions(out, executor="serial", cache_dir=cache_dir, progress=False))
    assert again.resumed and again.units_run == 0 and set(again.trained.values()) == {"cached"}
    assert before.identical(open_results(out).load())

    raw = yaml.safe_load(study.read_text())
    raw["hardware"]["pcm"]["variation"]["within"]["sigma"] = 0.07
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = run_cli("run", other, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2 and "different study" in r.stderr and "Traceback" not in r.stderr
    assert load_study(other).hash[:12] in r.stderr and spec.hash[:12] in r.stderr
    assert before.identical(open_results(out).load())  # nothing lost
    r = run_cli("run", other, "--out", out, "--executor", "serial", "--overwrite", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert open_results(out).attrs["spec_hash"] == load_study(other).hash


def test_a_directory_that_is_not_a_store_is_never_touched(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    r = run_cli("run", small_study(tmp_path, chips=4), "--out", out, "--overwrite", "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2 and "not an mcstudy results store" in r.stderr
    assert (out / "thesis.tex").read_text() == "years of work"


def test_missing_data_file_exits_2_before_any_store(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    study = small_study(tmp_path, chips=4, data={"dataset": "mnist", "root": str(root)})
    r = run_cli("run", study, "--out", tmp_path / "x.zarr")
    assert r.returncode == 2 and "train-images-idx3-ubyte" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_swept_populations_through_the_cli(tmp_path: Path, cache_dir: Path) -> None:
    raw = yaml.safe_load(small_study(tmp_path, chips=4).read_text())
    raw["hardware"]["pcm"]["variation"]["within"]["sigma"] = [0.0, 0.1]
    raw["hardware"]["sram"] = {"device": "sram", "periphery": {"adc": {"bits": 8}}}
    study = tmp_path / "sweep.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "sweep.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    names = ["pcm[variation.within.sigma=0]", "pcm[variation.within.sigma=0.1]", "sram"]
    for name in names:  # user-chosen names are printed literally (brackets are not markup)
        assert name in r.stdout
    ds = open_results(out)
    assert list(ds["hardware"].values) == names
    np.testing.assert_array_equal(ds["variation_within_sigma"].values, [0.0, 0.1, 0.0])
    assert list(ds["population"].values) == ["pcm", "pcm", "sram"]


def test_a_store_of_earlier_physics_is_never_resumed(tmp_path: Path, cache_dir: Path) -> None:
    """The models' version is part of a study's hash: chips computed before a change to the
    physics are never mixed with chips computed after; the refusal names both versions."""
    import zarr

    from mcstudy.spec import PHYSICS_VERSION

    study = small_study(tmp_path, chips=4)
    out = tmp_path / "old.zarr"
    run_study(load_study(study), RunOptions(out, executor="serial", cache_dir=cache_dir, progress=False))
    assert json.loads(open_results(out).attrs["spec_canonical"])["physics"] == PHYSICS_VERSION
    group = zarr.open_group(str(out), mode="r+")
    canonical = json.loads(group.attrs["spec_canonical"])
    del canonical["physics"]  # as written before the version was recorded
    group.attrs.update({"spec_canonical": json.dumps(canonical, sort_keys=True), "spec_hash": "0" * 64})
    r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2 and "physics version 1" in r.stderr and f"this is {PHYSICS_VERSION}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_seed_override_and_paired_comparison_through_the_cli(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=6)
    r = run_cli("run", study, "--seed", "5", "--executor", "serial", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr
    store = tmp_path / "results" / "quickstart-seed5.zarr"  # each seed its own store
    ds = open_results(store)
    assert ds.attrs["seed"] == 5 and ds.attrs["spec_hash"] == load_study(study, seed=5).hash != load_study(study).hash
    r = run_cli("compare", store, "variant", "noise_injection", "float", "--where", "procedure=inference")
    assert r.returncode == 0, r.stderr
    from mcstudy.analysis import paired_table

    df = paired_table(ds.sel(procedure=["inference"]), "variant", "noise_injection", "float")
    assert len(df) == 4 and (df["chips"] == 6).all() and (df["lower"] <= df["difference"]).all() and (df["difference"] <= df["upper"]).all()
    first = df.iloc[0]
    assert f"{first['difference']:+.2f}" in r.stdout and f"{first['lower']:+.2f} … {first['upper']:+.2f}" in r.stdout
    d = 100 * (ds["accuracy"].sel(variant="noise_injection") - ds["accuracy"].sel(variant="float")).sel(procedure="inference").isel(time=0)
    assert abs(float(d.mean()) - first["difference"]) < 1e-6  # float32 store values
    r = run_cli("compare", store, "variant", "noise_injection", "float", "--where", "procedure=nope")
    assert r.returncode == 2 and "no procedure 'nope'" in r.stderr
