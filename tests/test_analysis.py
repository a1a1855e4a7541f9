"""Analysis: interval coverage on synthetic data, paired comparisons, chips needed, the
report, the Parquet export and the notebooks, over real stores."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from scipy import stats as st

from mcstudy import open_results
from mcstudy.analysis import (
    chip_yield_ci,
    chips_needed,
    export_parquet,
    paired_difference,
    quantiles_ci,
    wilson_interval,
    write_report,
)
from mcstudy.errors import McStudyError

from .conftest import ROOT, run_cli, small_study

DIMS = ("variant", "hardware", "procedure", "time", "chip")
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def _store_like(acc: np.ndarray, float_acc: float = 0.9, variants: list[str] | None = None, procedures: list[str] | None = None) -> xr.Dataset:
    """A dataset shaped like a store: ``acc`` is (variant, hardware, procedure, time, chip)."""
    v, h, p, t, c = acc.shape
    return xr.Dataset(
        {"accuracy": (DIMS, acc), "float_accuracy": ("variant", np.full(v, float_acc))},
        coords={
            "variant": variants or [f"v{i}" for i in range(v)], "hardware": [f"h{i}" for i in range(h)],
            "procedure": procedures or [f"p{i}" for i in range(p)], "time": np.arange(1, t + 1, dtype=float), "chip": np.arange(c),
        },
        attrs={"yield_within": 0.01},
    )  # fmt: skip


# -- coverage of the intervals ----------------------------------------------------------------
# Each cell of a synthetic store is one independent experiment with a known answer; the
# share of cells whose interval holds the answer must be near the nominal 95 %. With R
# experiments that share has standard error sqrt(.95·.05/R); the tolerance is 4 of them.


def _coverage_tolerance(r: int) -> float:
    return 4 * np.sqrt(0.95 * 0.05 / r)


def test_wilson_interval_covers_the_true_yield_at_its_nominal_rate() -> None:
    rng = np.random.default_rng(1)
    r, n = 2000, 50
    for p in (0.5, 0.9, 0.97):
        k = rng.binomial(n, p, size=r)
        lo, hi = wilson_interval(k, n)
        cover = np.mean((lo <= p) & (p <= hi))
        # Wilson is close to nominal but not exact for a discrete binomial: allow its known
        # oscillation (about ±2 pp at n = 50) on top of the sampling tolerance
        assert abs(cover - 0.95) < _coverage_tolerance(r) + 0.02, (p, cover)


def test_chip_yield_ci_covers_at_its_nominal_rate_through_a_store() -> None:
    rng = np.random.default_rng(2)
    r, n, p = 1000, 80, 0.8
    # accuracy 0.95 (within 1 pp of float 0.9? no: above it) for "good" chips, 0.5 for bad
    acc = np.where(rng.random((1, r, 1, 1, n)) < p, 0.95, 0.5).astype(np.float32)
    y = chip_yield_ci(_store_like(acc))
    cover = float(((y["lower"] <= p) & (p <= y["upper"])).mean())
    assert abs(cover - 0.95) < _coverage_tolerance(r) + 0.02
    assert int(y["chips"].min()) == n


def test_bootstrap_quantile_intervals_cover_the_true_quantile() -> None:
    rng = np.random.default_rng(3)
    r, n = 300, 200
    acc = rng.normal(0.9, 0.02, size=(1, 1, r, 1, n))  # r independent cells along "procedure"
    q = quantiles_ci(_store_like(acc), (0.5, 0.05), n_boot=400)
    for qq in (0.5, 0.05):
        truth = st.norm.ppf(qq, 0.9, 0.02)
        cell = q.sel(quantile=qq)
        cover = float(((cell["lower"] <= truth) & (truth <= cell["upper"])).mean())
        # the percentile bootstrap of a tail quantile undercovers slightly at n = 200
        assert 0.95 - _coverage_tolerance(r) - 0.04 < cover < 0.95 + _coverage_tolerance(r), (qq, cover)
    np.testing.assert_allclose(q["estimate"].sel(quantile=0.5).values.ravel(), np.median(acc[0, 0, :, 0], axis=-1))


def test_paired_difference_mean_interval_and_wins() -> None:
    rng = np.random.default_rng(4)
    r, n, delta = 1000, 40, 0.01
    base = rng.normal(0.9, 0.03, size=(r, n))
    better = base + delta + rng.normal(0, 0.01, size=(r, n))  # paired: shares each chip's base
    acc = np.stack([base, better])[:, :, None, None, :]  # variant, hardware(=r experiments), ...
    d = paired_difference(_store_like(acc, variants=["float", "aware"]), "variant", "aware", "float")
    cover = float(((d["lower"] <= delta) & (delta <= d["upper"])).mean())
    assert abs(cover - 0.95) < _coverage_tolerance(r)
    # P(a wins) = P(N(δ, 0.01) > 0) = Φ(1)
    assert abs(float(d["wins"].mean()) - st.norm.cdf(1.0)) < 4 * np.sqrt(st.norm.cdf(1) * (1 - st.norm.cdf(1)) / (r * n))
    with pytest.raises(McStudyError, match="no variant 'magic'"):
        paired_difference(_store_like(acc, variants=["float", "aware"]), "variant", "magic", "float")


def test_chips_needed_reaches_the_requested_half_width() -> None:
    rng = np.random.default_rng(5)
    acc = np.where(rng.random((1, 1, 1, 1, 200)) < 0.9, 0.95, 0.5)
    ds = _store_like(acc)
    n = int(chips_needed(ds, 0.02, "yield").item())
    p = float(chip_yield_ci(ds)["yield"].item())
    lo, hi = wilson_interval(p * n, n)
    lo1, hi1 = wilson_interval(p * (n - 1), n - 1)
    assert (hi - lo) / 2 <= 0.02 < (hi1 - lo1) / 2  # the smallest such n
    assert abs(n - 1.96**2 * p * (1 - p) / 0.02**2) < 0.1 * n  # close to the normal approximation
    # 24 independent pilots of 400 chips; the 5th percentile of N(.9, .02) needs
    # n = z² q(1-q) / (h² f(x_q)²) chips (asymptotic). One pilot's bootstrap half-width is
    # itself noisy (about ±25 % here), so the median over the pilots is compared.
    q = chips_needed(_store_like(rng.normal(0.9, 0.02, size=(1, 1, 24, 1, 400))), 0.001, "quantile", q=0.05, n_boot=400)
    f = st.norm.pdf(st.norm.ppf(0.05)) / 0.02
    expected = 1.96**2 * 0.05 * 0.95 / (0.001**2 * f**2)
    assert 0.8 * expected < float(q.median()) < 1.25 * expected


# -- over a real store -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A small real study with two variants, two procedures, a sweep and a hostile description."""
    tmp = tmp_path_factory.mktemp("analysis")
    hardware = {
        "pcm": {
            "device": "pcm", "mapping": "differential",
            "variation": {"within": {"sigma": [0.02, 0.1]}, "between": {"sigma": 0.1, "granularity": "layer"}},
        }
    }  # fmt: skip
    study = small_study(tmp, chips=12, times=["20s", "1d", "1y"], hardware=hardware, description=HOSTILE)
    out = tmp / "s.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", "--quiet", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    return out


def test_report_writes_a_page_whose_images_all_exist_and_escapes_names(store: Path, tmp_path: Path) -> None:
    r = run_cli("report", store, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 6
    for src in images:
        assert (tmp_path / "rep" / src).stat().st_size > 1000
    assert "<script>" not in page and html.escape(HOSTILE) in page  # in the description and the study file
    for text in ("spec hash", "Provenance", "Tolerance to variation_within_sigma", "yield CI"):
        assert text in page
    ds = open_results(store)
    assert ds.attrs["spec_hash"] in page


def test_report_default_directory_and_bad_store(store: Path, tmp_path: Path) -> None:
    r = run_cli("report", tmp_path / "missing.zarr")
    assert r.returncode == 2 and "no results store" in r.stderr and "Traceback" not in r.stderr
    page = write_report(open_results(store), tmp_path / "direct")
    assert page.exists()


def test_parquet_round_trips_to_the_store(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "rows.parquet"
    r = run_cli("export", store, "--parquet", target)
    assert r.returncode == 0, r.stderr
    df = pq.read_table(target).to_pandas()
    ds = open_results(store).load()
    assert len(df) == np.prod([ds.sizes[d] for d in DIMS])
    for col in ("variant", "hardware", "procedure", "time", "time_label", "chip", "trainer", "population", "variation_within_sigma", "float_accuracy"):
        assert col in df.columns
    back = df.set_index(list(DIMS))["accuracy"].to_xarray()
    back = back.reindex_like(ds["accuracy"])
    np.testing.assert_array_equal(back.transpose(*DIMS).values, ds["accuracy"].values)
    one = df[(df.variant == "float") & (df.chip == 3) & (df.procedure == "inference")].sort_values(["hardware", "time"])
    assert (one["float_accuracy"] == float(ds["float_accuracy"].sel(variant="float"))).all()
    r = run_cli("export", store, "--parquet", tmp_path / "no" / "such" / "dir.parquet")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_export_writes_only_evaluated_chips(store: Path, tmp_path: Path) -> None:
    ds = open_results(store).load()
    half = ds.copy()
    half["done"] = half["done"].where(half["chip"] < 6, False)
    rows = export_parquet(half, tmp_path / "half.parquet")
    assert rows == len(pd.read_parquet(tmp_path / "half.parquet")) == np.prod([ds.sizes[d] for d in DIMS]) // 2


# -- notebooks --------------------------------------------------------------------------------


STORE_NOTEBOOKS = ["01_distributions_and_yield.ipynb", "02_compare_variants_and_procedures.ipynb"]


@pytest.mark.parametrize("notebook", [ROOT / "analysis" / n for n in STORE_NOTEBOOKS], ids=lambda p: p.name)
def test_notebook_runs_against_a_small_store(notebook: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MCSTUDY_STORE", str(store))
    nb = nbformat.read(notebook, as_version=4)
    assert "MCSTUDY_STORE" in nb.cells[0].source or "MCSTUDY_STORE" in nb.cells[1].source  # the store is set up top
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)


def test_your_own_model_notebook_runs_a_module_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """03_your_own_model.ipynb: a study dict, a network from tiny_net.py beside it, run
    with mcstudy.run; executed with a real kernel, writing only to a temporary store."""
    import nbformat
    from nbclient import NotebookClient

    from mcstudy import open_results

    notebook = ROOT / "analysis" / "03_your_own_model.ipynb"
    out = tmp_path / "own.zarr"
    monkeypatch.setenv("MCSTUDY_NOTEBOOK_DIR", str(ROOT / "analysis"))
    monkeypatch.setenv("MCSTUDY_OUT", str(out))
    monkeypatch.setenv("MCSTUDY_CHIPS", "8")
    nb = nbformat.read(notebook, as_version=4)
    assert "mcstudy.run(study" in "".join(c.source for c in nb.cells)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    ds = open_results(out)
    assert ds.attrs["spec_hash"] and ds["accuracy"].sizes["chip"] == 8
    assert set(map(str, ds["hardware"].values)) == {"ideal", "pcm"}


def test_there_are_at_least_two_notebooks() -> None:
    assert len(list((ROOT / "analysis").glob("*.ipynb"))) >= 3
    assert sorted(p.name for p in (ROOT / "analysis").glob("*.ipynb")) == sorted([*STORE_NOTEBOOKS, "03_your_own_model.ipynb"])
    assert os.path.isdir(ROOT / "analysis")


def test_paired_table_and_the_claims_helpers_pair_the_same_chips(store: Path) -> None:
    """``paired_table`` is ``paired_difference`` cell by cell in percentage points, and the
    reproduction tables' cross-cell pairing (``analysis/claims.py``) gives the same number
    as a direct per-chip difference."""
    import importlib.util

    from mcstudy import open_results
    from mcstudy.analysis import paired_table

    ds = open_results(store).load()
    df = paired_table(ds, "variant", "noise_injection", "float")
    d = paired_difference(ds, "variant", "noise_injection", "float")
    assert len(df) == d["mean"].size
    first = df.iloc[0]
    cell = d.sel(hardware=first["hardware"], procedure=first["procedure"]).isel(time=0)
    assert first["difference"] == pytest.approx(100 * float(cell["mean"])) and first["chips"] == 12
    spec = importlib.util.spec_from_file_location("claims", Path(__file__).resolve().parents[1] / "analysis" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    h0, h1 = map(str, ds["hardware"].values)
    text = claims._pair(ds, dict(variant="noise_injection", hardware=h1, procedure="inference", time=float(ds.time[0])), dict(variant="float", hardware=h0))
    direct = 100 * (ds["accuracy"].sel(variant="noise_injection", hardware=h1) - ds["accuracy"].sel(variant="float", hardware=h0)).sel(procedure="inference").isel(time=0)
    assert text.startswith(f"{float(direct.mean()):+.2f} (")


def test_common_scale_script_scales_exactly_the_crossbar_weights(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """analysis/common_scale.py: factor 1 is the float network; an attention's query and
    key rows are the first 2·E rows of its input projection; the table prints."""
    import importlib.util
    import sys

    import torch.nn as nn
    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("common_scale", root / "analysis" / "common_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.MultiheadAttention(8, 2)])

    assert module.query_key_rows(Net()) == {"blocks.0.in_proj_weight": slice(0, 16)}
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "seed": 1, "chips": 2, "times": ["20s"], "model": {"name": "transformer", "dim": 8, "heads": 2, "blocks": 1, "mlp": 8, "patch": 8},
        "variants": {"f": {"trainer": "standard", "epochs": 2}}, "hardware": {"pcm": {"device": "pcm"}},
    }))  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["common_scale.py", str(study), "--cache-dir", str(cache_dir), "--factors", "1", "0.5"])
    module.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows[0][0] == "1.00" and rows[0][1] == rows[0][2] == rows[0][3] and len(rows) == 2
