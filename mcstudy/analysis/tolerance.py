"""Variation tolerance (Jia et al., DAC 2018): how much variation a network stands.

Over a sweep of one variation parameter of a population, the tolerance is the largest
value at which the mean accuracy loss over chips, against the float model, stays under
a threshold (Jia et al.: 1 %). Between two swept values the loss is interpolated
linearly; the tolerance is where it first reaches the threshold.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import McStudyError


def _coordinate(ds: xr.Dataset, parameter: str) -> str:
    name = parameter.replace(".", "_")
    if name not in ds.coords or ds[name].dims != ("hardware",):
        swept = sorted(c for c in ds.coords if ds[c].dims == ("hardware",) and ds[c].dtype.kind == "f")
        raise McStudyError(f"no swept hardware parameter {parameter!r} in this store; swept: {', '.join(swept) or 'none'}")
    return name


def sweeping_populations(ds: xr.Dataset, name: str) -> list[str]:
    """Populations (in store order) along which hardware coordinate ``name`` takes two or more values."""
    pops = list(dict.fromkeys(ds["population"].values.tolist()))
    out = []
    for pop in pops:
        values = ds[name].values[ds["population"].values == pop]
        if not np.isnan(values).any() and len(np.unique(values)) > 1:
            out.append(pop)
    return out


def crossing(values: np.ndarray, loss: np.ndarray, threshold: float) -> tuple[float, bool]:
    """First value (ascending ``values``) at which the linearly interpolated ``loss``
    reaches ``threshold``; ``(largest value, True)`` when it never does (censored), NaN
    when the smallest value already does."""
    below = loss < threshold
    if below.all():
        return float(values[-1]), True
    i = int(np.argmin(below))  # first point at or above the threshold
    if i == 0:
        return float("nan"), False
    v0, v1, l0, l1 = values[i - 1], values[i], loss[i - 1], loss[i]
    return float(v0 + (threshold - l0) * (v1 - v0) / (l1 - l0)), False


def _resampled_mean(values: xr.DataArray, resamples: int, seed: int) -> xr.DataArray:
    """Means over ``chip`` of ``resamples`` bootstrap draws of the chips (with replacement),
    each draw the same for every other coordinate (paired: a chip is the same chip at
    every swept value, procedure and time); dimension ``resample`` in place of ``chip``."""
    n = values.sizes["chip"]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    weights = xr.DataArray(counts / n, dims=("resample", "chip"))
    return values.fillna(0.0).dot(weights, dim="chip") / values.notnull().dot(weights, dim="chip")


def tolerance(
    ds: xr.Dataset,
    parameter: str,
    threshold: float = 0.01,
    relative: bool = False,
    metric: str = "accuracy",
    resamples: int = 0,
    seed: int = 0,
) -> xr.Dataset:
    """Tolerance to ``parameter`` (a swept hardware field, e.g. ``"periphery.op_drift.offset"``)
    per variant, population, procedure and time.

    ``threshold`` is the largest mean accuracy loss against the float model (absolute, in
    accuracy units: 0.01 = 1 percentage point; with ``relative``, a fraction of the float
    accuracy). Only populations along which ``parameter`` varies — and nothing else does —
    are used. Returns ``tolerance`` (NaN: already over the threshold at the smallest swept
    value) and ``censored`` (True: never over it; the tolerance is at least the value
    given), with dimensions variant, population, procedure and time. With ``resamples``,
    each is computed on that many bootstrap draws of the chips (dimension ``resample``;
    the same draw for every swept value, procedure and time, so a gain between
    procedures stays paired): ``tol.tolerance.quantile([0.025, 0.975], "resample")`` is a
    95 % interval over chips.
    """
    name = _coordinate(ds, parameter)
    swept = [c for c in ds.coords if ds[c].dims == ("hardware",) and ds[c].dtype.kind == "f" and c != name]
    chip_mean = ds[metric].mean("chip", skipna=True) if resamples == 0 else _resampled_mean(ds[metric].load(), resamples, seed)
    mean_loss = ds[f"float_{metric}"] - chip_mean
    limit = threshold * ds[f"float_{metric}"] if relative else xr.full_like(ds[f"float_{metric}"], threshold)
    out_tol, out_cens, used = [], [], []
    for pop in sweeping_populations(ds, name):
        sel = np.flatnonzero(ds["population"].values == pop)
        values = ds[name].values[sel]
        others = [c for c in swept if len(np.unique(ds[c].values[sel])) > 1]
        if others:
            raise McStudyError(
                f"population {pop!r} sweeps {', '.join(others)} as well as {name}: select one value of each first (ds.where/ds.isel)"
            )
        order = sel[np.argsort(values, kind="stable")]
        loss = mean_loss.isel(hardware=order).load()
        lim = limit.load()

        xs = np.sort(values)
        tol, cens = xr.apply_ufunc(
            np.vectorize(lambda l, thr, xs=xs: crossing(xs, l, float(thr)), signature="(h),()->(),()"),
            loss,
            lim,
            input_core_dims=[["hardware"], []],
            output_core_dims=[[], []],
        )
        out_tol.append(tol)
        out_cens.append(cens)
        used.append(pop)
    if not used:
        raise McStudyError(f"no population sweeps {name} over two or more values")
    result = xr.Dataset(
        {
            "tolerance": xr.concat(out_tol, dim="population").assign_coords(population=used),
            "censored": xr.concat(out_cens, dim="population").assign_coords(population=used).astype(bool),
        }
    )
    result["tolerance"].attrs = {"long_name": f"largest {name} with mean {metric} loss under the threshold", "threshold": threshold, "relative": int(relative)}
    result.attrs["parameter"] = name
    return result


def tolerance_gain(tol: xr.Dataset | xr.DataArray, procedure: str, baseline: str = "inference") -> xr.DataArray:
    """Relative tolerance gain of ``procedure`` over ``baseline`` (0.5 = +50 %)."""
    t = tol["tolerance"] if isinstance(tol, xr.Dataset) else tol
    for p in (procedure, baseline):
        if p not in t["procedure"].values:
            raise McStudyError(f"no procedure {p!r}; have {', '.join(map(str, t['procedure'].values))}")
    gain = t.sel(procedure=procedure, drop=True) / t.sel(procedure=baseline, drop=True) - 1
    gain.attrs = {"long_name": f"tolerance gain of {procedure} over {baseline}", "units": "1"}
    return gain
