"""Statistics over the chips of a store, with confidence intervals.

Every function takes the store's dataset (lazy is fine: it reduces over ``chip`` one
(variant, hardware, procedure, time) cell at a time, with dask where the store is
chunked) and returns an ``xarray.Dataset`` over the remaining dimensions.

- yield with Wilson score intervals (Wilson, JASA 1927);
- quantiles with percentile-bootstrap intervals (Efron & Tibshirani 1993, ch. 13);
- paired comparisons on the same chips: mean difference with a Student-t interval, and
  the share of chips where one side wins with a Wilson interval;
- the number of chips a study needs for a requested interval half-width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from scipy import stats as _st

from ..errors import McStudyError
from ..vocabulary import CELL_DIMS

if TYPE_CHECKING:
    import pandas as pd

SLACK = 1e-6  # float32 rounding of accuracies; far below one test sample


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise McStudyError(f"confidence must be between 0 and 1; got {confidence}")
    return float(_st.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: Any, n: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion ``successes / n`` (arrays broadcast).
    NaN where ``n`` is 0."""
    k, m = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = _z(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        centre = (p + z * z / (2 * m)) / (1 + z * z / m)
        half = z / (1 + z * z / m) * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return centre - half, centre + half


def in_percent(metric: str) -> bool:
    """Whether a stored metric is an accuracy (a share of samples: ``accuracy``,
    ``accuracy_before``, ``top5_accuracy``), shown in percent and differenced in pp."""
    return metric.startswith("accuracy") or metric.endswith("_accuracy")


def headline(ds: xr.Dataset) -> str:
    """The store's headline metric: the study's ``metric`` (accuracy unless it names another)."""
    return str(ds.attrs.get("headline_metric", "accuracy"))


def lower_is_better(metric: xr.DataArray) -> bool:
    """Whether smaller values of a stored metric are better (an error such as ``mse``)."""
    return metric.attrs.get("better") == "lower"


def _threshold(ds: xr.Dataset, metric: str, within: float | None, absolute: float | None) -> xr.DataArray | float:
    """The value a chip must reach: ``absolute``, or within ``within`` of the float model —
    below it by ``within`` for an accuracy, above it by the factor ``1 + within`` for an error."""
    if absolute is not None:
        return absolute
    within = float(ds.attrs.get("yield_within", 0.01)) if within is None else within
    return yield_threshold(ds[metric], ds[f"float_{metric}"], within)


def yield_rule(within: float, lower: bool) -> str:
    """The yield's rule in words, for ``within`` (a fraction) and an error (``lower``) or an accuracy."""
    return f"at most {within * 100:g} % above float" if lower else f"within {within * 100:g} pp of float"


def yield_threshold(metric: xr.DataArray, float_metric: xr.DataArray, within: float) -> xr.DataArray:
    """What a chip must reach to pass: the float model's ``metric`` less ``within`` (an
    accuracy: 0.01 = 1 pp), or times ``1 + within`` (an error: 0.01 = 1 % more)."""
    return float_metric * (1 + within) if lower_is_better(metric) else float_metric - within


def passing_chips(metric: xr.DataArray, threshold: xr.DataArray | float) -> tuple[xr.DataArray, xr.DataArray]:
    """``(passing, evaluated)``: per cell, how many chips reach ``threshold`` (at least it,
    or at most it for an error, to :data:`SLACK`) and how many were evaluated (chips not
    yet evaluated are left out)."""
    evaluated = metric.notnull()
    if lower_is_better(metric):  # an error of any units: float32 rounding relative to its size
        ok = (metric <= threshold * (1 + SLACK)) & evaluated
    else:
        ok = (metric >= threshold - SLACK) & evaluated
    return ok.sum("chip").compute(), evaluated.sum("chip").compute()


def chip_yield_ci(
    ds: xr.Dataset,
    within: float | None = None,
    absolute: float | None = None,
    confidence: float = 0.95,
    metric: str | None = None,
) -> xr.Dataset:
    """Share of chips whose ``metric`` (default: the headline) reaches ``absolute``, or
    (default) is within ``within`` of the float model's (the store's ``yield_within``: 0.01
    = 1 pp of accuracy, or 1 % above the float model's error), with its Wilson interval.
    Chips not yet evaluated are left out. Variables: ``yield``, ``lower``, ``upper``,
    ``chips``, ``passing``."""
    metric = metric or headline(ds)
    k, n = passing_chips(ds[metric], _threshold(ds, metric, within, absolute))
    lo, hi = wilson_interval(k.values, n.values, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = k / n
    out = xr.Dataset({"yield": frac, "lower": (k.dims, lo), "upper": (k.dims, hi), "chips": n, "passing": k})
    out.attrs = {"confidence": confidence, "metric": metric, "threshold": "absolute" if absolute is not None else "relative to float"}
    return out


def _bootstrap_quantiles(x: np.ndarray, qs: np.ndarray, n_boot: int, alpha: float, seed: int) -> np.ndarray:
    """(len(qs), 3): estimate, lower, upper for one cell's chips (NaN-free)."""
    x = x[~np.isnan(x)]
    out = np.full((len(qs), 3), np.nan)
    if x.size == 0:
        return out
    out[:, 0] = np.quantile(x, qs)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, len(qs)))
    for a in range(0, n_boot, 256):  # bounded memory: 256 resamples at a time
        b = min(256, n_boot - a)
        idx = rng.integers(0, x.size, size=(b, x.size))
        boot[a : a + b] = np.quantile(x[idx], qs, axis=1).T
    out[:, 1] = np.quantile(boot, alpha / 2, axis=0)
    out[:, 2] = np.quantile(boot, 1 - alpha / 2, axis=0)
    return out


def quantiles_ci(
    ds: xr.Dataset,
    q: tuple[float, ...] = (0.5, 0.05, 0.01),
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    metric: str | None = None,
) -> xr.Dataset:
    """Quantiles of ``metric`` over chips (default median, 5th and 1st percentile) with
    percentile-bootstrap intervals (``n_boot`` resamples of the chips, fixed ``seed``).
    Variables ``estimate``, ``lower``, ``upper`` with a ``quantile`` dimension."""
    _z(confidence)
    metric = metric or headline(ds)
    qs = np.asarray(q, dtype=np.float64)
    if ((qs < 0) | (qs > 1)).any():
        raise McStudyError(f"quantiles must lie in [0, 1]; got {list(q)}")
    acc = ds[metric]
    if acc.chunks is not None:
        acc = acc.chunk({"chip": -1})
    res = xr.apply_ufunc(
        lambda x: _bootstrap_quantiles(x, qs, n_boot, 1 - confidence, seed),
        acc,
        input_core_dims=[["chip"]],
        output_core_dims=[["quantile", "bound"]],
        vectorize=True,
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"quantile": len(qs), "bound": 3}},
    ).compute()
    res = res.assign_coords(quantile=qs)
    out = xr.Dataset({name: res.isel(bound=i, drop=True) for i, name in enumerate(("estimate", "lower", "upper"))})
    out.attrs = {"confidence": confidence, "n_boot": n_boot, "seed": seed, "metric": metric}
    return out


def paired_difference(
    ds: xr.Dataset,
    dim: str,
    a: str,
    b: str,
    confidence: float = 0.95,
    metric: str | None = None,
) -> xr.Dataset:
    """``a − b`` along ``dim`` (``"variant"``, ``"procedure"`` or ``"hardware"``), chip by
    chip — every chip of a store is common to all variants and procedures, so each
    difference is paired. ``metric``: default the headline. Variables: ``mean`` with
    ``lower``/``upper`` (Student-t), ``wins`` (share of chips where ``a`` is better: higher,
    or lower for an error) with ``wins_lower``/``wins_upper`` (Wilson), ``ties``, ``chips``."""
    metric = metric or headline(ds)
    if dim not in ds[metric].dims or dim == "chip":
        raise McStudyError(f"cannot pair along {dim!r}; choose one of variant, hardware, procedure, time")
    names = [str(v) for v in ds[dim].values]
    for name in (a, b):
        if name not in names:
            raise McStudyError(f"no {dim} {name!r}; have {', '.join(names)}")
    d = ds[metric].sel({dim: a}, drop=True) - ds[metric].sel({dim: b}, drop=True)
    out = _t_interval(d, confidence)
    n = out["chips"]
    lower = lower_is_better(ds[metric])
    # float32 rounding: absolute for accuracies, relative to the values' size for an error of any units
    slack = SLACK * np.maximum(abs(ds[metric].sel({dim: a}, drop=True)), abs(ds[metric].sel({dim: b}, drop=True))) if lower else SLACK
    wins = ((d < -slack) if lower else (d > slack)).sum("chip").compute()
    ties = (abs(d) <= slack).sum("chip").compute()
    lo, hi = wilson_interval(wins.values, n.values, confidence)
    dims = n.dims
    out = out.assign(wins=wins / n, wins_lower=(dims, lo), wins_upper=(dims, hi), ties=ties / n)
    out.attrs = {"dim": dim, "a": a, "b": b, "confidence": confidence, "metric": metric}
    return out


def paired_table(
    ds: xr.Dataset, dim: str, a: str, b: str, confidence: float = 0.95, metric: str | None = None
) -> "pd.DataFrame":
    """:func:`paired_difference` as one row per remaining cell (e.g. hardware × procedure ×
    time for ``dim="variant"``): the mean difference ``a − b`` over the same chips with its
    Student-t interval, in percentage points for accuracies, and the share of chips ``a`` wins."""
    import pandas as pd

    metric = metric or headline(ds)
    res = paired_difference(ds, dim, a, b, confidence, metric).compute()
    scale = 100.0 if in_percent(metric) else 1.0
    cells = [d for d in CELL_DIMS if d in res["mean"].dims]
    labels = dict(zip(ds["time"].values.tolist(), map(str, ds["time_label"].values.tolist()))) if "time_label" in ds else {}
    rows = []
    for idx in np.ndindex(*(res.sizes[d] for d in cells)):
        at = dict(zip(cells, idx))
        cell = res.isel(at)
        row = {d: (labels.get(float(cell[d]), str(cell[d].values)) if d == "time" else str(cell[d].values)) for d in cells}
        row.update({
            "difference": scale * float(cell["mean"]), "lower": scale * float(cell["lower"]), "upper": scale * float(cell["upper"]),
            "wins": float(cell["wins"]), "ties": float(cell["ties"]), "chips": int(cell["chips"]),
        })  # fmt: skip
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs = {"dim": dim, "a": a, "b": b, "confidence": confidence, "metric": metric, "units": "pp" if scale == 100.0 else str(ds[metric].attrs.get("units", metric))}
    return out


def chips_needed(
    ds: xr.Dataset,
    half_width: float,
    statistic: str = "yield",
    q: float = 0.05,
    within: float | None = None,
    confidence: float = 0.95,
    n_boot: int = 1000,
    metric: str | None = None,
) -> xr.DataArray:
    """Chips needed for a confidence interval of ``half_width`` on each cell's yield
    (``statistic="yield"``; the smallest n whose Wilson interval at the pilot's yield is
    that narrow) or quantile ``q`` (``"quantile"``; the pilot's bootstrap half-width
    scaled by 1/√n), from a pilot store."""
    if half_width <= 0:
        raise McStudyError(f"half_width must be positive; got {half_width}")
    metric = metric or headline(ds)
    if statistic == "yield":
        y = chip_yield_ci(ds, within=within, confidence=confidence, metric=metric)["yield"]

        def need(p: float) -> float:
            if np.isnan(p):
                return np.nan
            n = 1
            while True:  # Wilson half-width shrinks monotonically in n; double, then bisect
                lo, hi = wilson_interval(p * n, n, confidence)
                if (hi - lo) / 2 <= half_width:
                    break
                n *= 2
            low = n // 2
            while n - low > 1:
                mid = (low + n) // 2
                lo, hi = wilson_interval(p * mid, mid, confidence)
                if (hi - lo) / 2 <= half_width:
                    n = mid
                else:
                    low = mid
            return float(n)

        out = xr.apply_ufunc(np.vectorize(need), y)
    elif statistic == "quantile":
        res = quantiles_ci(ds, (q,), confidence, n_boot, metric=metric).isel(quantile=0, drop=True)
        n = ds[metric].notnull().sum("chip")
        pilot_half = (res["upper"] - res["lower"]) / 2
        out = np.ceil(n * (pilot_half / half_width) ** 2)
    else:
        raise McStudyError(f"statistic must be 'yield' or 'quantile'; got {statistic!r}")
    out.attrs = {"long_name": f"chips for a ±{half_width} {int(confidence * 100)} % interval on the {statistic}", "units": "chips"}
    return out.rename("chips_needed")


def _t_interval(x: xr.DataArray, confidence: float) -> xr.Dataset:
    """Mean over ``chip`` with its Student-t interval."""
    _z(confidence)
    n = x.notnull().sum("chip").compute()
    mean = x.mean("chip").compute()
    sd = x.std("chip", ddof=1).compute()
    t = _st.t.ppf(0.5 + confidence / 2, np.maximum(n.values - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t * sd.values / np.sqrt(n.values)
    return xr.Dataset({"mean": mean, "lower": (mean.dims, mean.values - half), "upper": (mean.dims, mean.values + half), "chips": n})


def mean_ci(ds: xr.Dataset, confidence: float = 0.95, metric: str | None = None) -> xr.Dataset:
    """Mean of ``metric`` (default: the headline) over chips with its Student-t interval
    (``mean``, ``lower``, ``upper``, ``chips``)."""
    return _t_interval(ds[metric or headline(ds)], confidence)


__all__ = ["chip_yield_ci", "chips_needed", "headline", "in_percent", "lower_is_better", "mean_ci", "yield_rule", "paired_difference", "paired_table", "quantiles_ci", "wilson_interval"]
