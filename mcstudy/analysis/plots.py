"""Figures over a store: accuracy distributions and yield against drift time, tolerance
curves against a swept parameter, paired differences between variants or procedures.

Every function returns a matplotlib ``Figure`` (nothing is shown or saved), with axis
labels carrying units and a legend; drift time is on a log axis in seconds, labelled
with the study's own time labels.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..errors import McStudyError
from .stats import chip_yield_ci, headline, in_percent, lower_is_better, mean_ci, paired_difference, yield_rule, yield_threshold
from .tolerance import sweeping_populations

METRIC_LABEL = {"accuracy": "test accuracy (%)"}


def _scale(metric: str) -> float:
    """Accuracies are shown in percent, other metrics in their own units."""
    return 100.0 if in_percent(metric) else 1.0


def _label(metric: str, ds: xr.Dataset | None = None) -> str:
    if metric in METRIC_LABEL:
        return METRIC_LABEL[metric]
    attrs = ds[metric].attrs if ds is not None and metric in ds else {}
    if _scale(metric) == 100.0:
        return f"{attrs.get('long_name', metric)} (%)"
    return f"{attrs.get('long_name', metric)} ({attrs['units']})" if "units" in attrs else metric


def _pick(ds: xr.Dataset, dim: str, name: str | None) -> str:
    names = [str(v) for v in ds[dim].values]
    if name is None:
        return names[0]
    if name not in names:
        raise McStudyError(f"no {dim} {name!r} in this store; have {', '.join(names)}")
    return name


def _time_axis(ax: Any, ds: xr.Dataset) -> None:
    t = ds["time"].values
    ax.set_xscale("log")
    ax.set_xticks(t)
    ax.set_xticklabels([str(s) for s in ds["time_label"].values])
    ax.minorticks_off()
    ax.set_xlabel("time after programming (log scale)")


def _series(ds: xr.Dataset) -> list[tuple[str, str]]:
    return [(str(v), str(p)) for v in ds["variant"].values for p in ds["procedure"].values]


def plot_distributions(ds: xr.Dataset, hardware: str | None = None, metric: str | None = None, kind: str = "violin") -> Figure:
    """Per-chip ``metric`` (default: the study's headline metric) against drift time on one
    hardware population: a violin per variant at every time, one panel per procedure
    (``kind="violin"``), or empirical CDFs, one panel per time (``kind="ecdf"``). Dashed
    lines: each variant's float model."""
    metric = metric or headline(ds)
    hw = _pick(ds, "hardware", hardware)
    data = ds[metric].sel(hardware=hw).load() * _scale(metric)
    variants, procedures = [str(v) for v in ds["variant"].values], [str(p) for p in ds["procedure"].values]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if kind == "violin":
        fig, axes = plt.subplots(1, len(procedures), figsize=(4.2 * len(procedures) + 1, 4), sharey=True, squeeze=False)
        pos = np.arange(ds.sizes["time"], dtype=float)
        width = 0.8 / len(variants)
        for ax, proc in zip(axes[0], procedures):
            for i, v in enumerate(variants):
                vals = [x[~np.isnan(x)] for x in data.sel(variant=v, procedure=proc).transpose("time", "chip").values]
                keep = [j for j, x in enumerate(vals) if x.size]
                if keep:
                    parts = ax.violinplot([vals[j] for j in keep], positions=pos[keep] + (i - (len(variants) - 1) / 2) * width, widths=width * 0.9, showmedians=True)
                    for body in parts["bodies"]:  # type: ignore[attr-defined]
                        body.set_facecolor(colors[i % len(colors)])
                        body.set_alpha(0.6)
                if f"float_{metric}" in ds:
                    ax.axhline(float(ds[f"float_{metric}"].sel(variant=v)) * _scale(metric), color=colors[i % len(colors)], ls="--", lw=1)
                ax.plot([], [], color=colors[i % len(colors)], lw=6, alpha=0.6, label=v)
            ax.set_xticks(pos)
            ax.set_xticklabels([str(s) for s in ds["time_label"].values])
            ax.set_xlabel("time after programming")
            ax.set_title(f"procedure: {proc}")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel(_label(metric, ds))
        axes[0][-1].legend(title="variant (dashed: float)", fontsize="small")
    elif kind == "ecdf":
        times = list(ds["time_label"].values)
        fig, axes = plt.subplots(1, len(times), figsize=(4 * len(times) + 1, 3.6), sharey=True, squeeze=False)
        for ax, (ti, label) in zip(axes[0], enumerate(times)):
            for v, p in _series(ds):
                x = np.sort(data.sel(variant=v, procedure=p).isel(time=ti).values)
                x = x[~np.isnan(x)]
                if x.size:
                    ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=f"{v} / {p}")
            ax.set_title(f"t = {label}")
            ax.set_xlabel(_label(metric, ds))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("fraction of chips ≤ x")
        axes[0][-1].legend(title="variant / procedure", fontsize="small")
    else:
        raise McStudyError(f"kind must be 'violin' or 'ecdf'; got {kind!r}")
    fig.suptitle(f"{metric} over {ds.sizes['chip']} chips — hardware: {hw}")
    fig.tight_layout()
    return fig


def plot_yield(ds: xr.Dataset, hardware: str | None = None, within: float | None = None, confidence: float = 0.95) -> Figure:
    """Yield (share of chips within ``within`` of the float model's headline metric)
    against drift time, one line per variant and procedure, with its Wilson confidence band."""
    hw = _pick(ds, "hardware", hardware)
    y = chip_yield_ci(ds.sel(hardware=[hw]), within=within, confidence=confidence).isel(hardware=0)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    t = ds["time"].values
    for v, p in _series(ds):
        cell = y.sel(variant=v, procedure=p)
        line = ax.plot(t, cell["yield"] * 100, marker="o", label=f"{v} / {p}")[0]
        ax.fill_between(t, cell["lower"] * 100, cell["upper"] * 100, color=line.get_color(), alpha=0.2)
    _time_axis(ax, ds)
    w = float(ds.attrs.get("yield_within", 0.01)) if within is None else within
    ax.set_ylabel(f"yield (%): chips {yield_rule(w, lower_is_better(ds[headline(ds)]))}")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(title=f"variant / procedure ({int(confidence * 100)} % Wilson band)", fontsize="small")
    ax.set_title(f"yield — hardware: {hw}")
    fig.tight_layout()
    return fig


def swept_parameters(ds: xr.Dataset) -> list[str]:
    """Hardware coordinates that vary within some population (sweeps)."""
    return [str(c) for c in ds.coords if ds[c].dims == ("hardware",) and ds[c].dtype.kind == "f" and sweeping_populations(ds, str(c))]


def plot_tolerance(ds: xr.Dataset, parameter: str, time: float | None = None, threshold: float = 0.01, confidence: float = 0.95) -> Figure:
    """Mean headline metric (accuracy unless the study names another) over chips against a
    swept hardware parameter, with its Student-t band, one panel per population that
    sweeps it and one line per variant and procedure; the dotted line is each variant's
    yield threshold (its float accuracy minus ``threshold``, or error times 1 + ``threshold``)."""
    metric = headline(ds)
    scale = _scale(metric)
    name = parameter.replace(".", "_")
    if name not in swept_parameters(ds):
        raise McStudyError(f"{parameter!r} is not swept in this store; swept: {', '.join(swept_parameters(ds)) or 'none'}")
    ti = 0 if time is None else int(np.argmin(np.abs(ds["time"].values - time)))
    pops = sweeping_populations(ds, name)
    fig, axes = plt.subplots(1, len(pops), figsize=(6 * len(pops), 4), squeeze=False)
    stats = mean_ci(ds.isel(time=[ti]), confidence).isel(time=0)
    for ax, pop in zip(axes[0], pops):
        sel = np.flatnonzero(ds["population"].values == pop)
        order = sel[np.argsort(ds[name].values[sel])]
        x = ds[name].values[order]
        for v, p in _series(ds):
            cell = stats.sel(variant=v, procedure=p).isel(hardware=order)
            line = ax.plot(x, cell["mean"] * scale, marker="o", label=f"{v} / {p}")[0]
            ax.fill_between(x, cell["lower"] * scale, cell["upper"] * scale, color=line.get_color(), alpha=0.2)
        for v in ds["variant"].values:
            limit = yield_threshold(ds[metric], ds[f"float_{metric}"].sel(variant=v), threshold)
            ax.axhline(float(limit) * scale, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"{parameter} (swept)")
        ax.set_ylabel(f"mean over chips: {_label(metric, ds)}")
        ax.set_title(f"population: {pop}, t = {ds['time_label'].values[ti]}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title=f"variant / procedure ({int(confidence * 100)} % band)", fontsize="small")
    fig.tight_layout()
    return fig


def plot_paired(ds: xr.Dataset, dim: str, a: str, b: str, hardware: str | None = None, confidence: float = 0.95) -> Figure:
    """Per-chip differences ``a − b`` along ``dim`` (same chips) against drift time on one
    hardware population: the mean with its confidence interval and the share of chips
    where ``a`` wins, one line per remaining variant or procedure."""
    hw = _pick(ds, "hardware", hardware)
    if dim == "hardware":
        raise McStudyError("plot_paired compares variants or procedures; pick the hardware with hardware=")
    metric = headline(ds)
    scale = _scale(metric)
    diff = paired_difference(ds.sel(hardware=[hw]), dim, a, b, confidence).isel(hardware=0)
    other = "procedure" if dim == "variant" else "variant"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    t = ds["time"].values
    for o in diff[other].values:
        cell = diff.sel({other: o})
        line = ax1.plot(t, cell["mean"] * scale, marker="o", label=str(o))[0]
        ax1.fill_between(t, cell["lower"] * scale, cell["upper"] * scale, color=line.get_color(), alpha=0.2)
        ax2.plot(t, cell["wins"] * 100, marker="o", color=line.get_color(), label=str(o))
        ax2.fill_between(t, cell["wins_lower"] * 100, cell["wins_upper"] * 100, color=line.get_color(), alpha=0.2)
    for ax in (ax1, ax2):
        _time_axis(ax, ds)
        ax.grid(alpha=0.3)
    ax1.axhline(0, color="black", lw=0.8)
    if scale == 100.0:
        ax1.set_ylabel(f"mean {metric} difference, {a} − {b} (pp)")
    else:
        ax1.set_ylabel(f"mean {metric} difference, {a} − {b} ({ds[metric].attrs.get('units', metric)})")
    ax2.set_ylabel(f"chips where {a} is better (%)")
    ax2.set_ylim(-2, 102)
    ax1.legend(title=other, fontsize="small")
    fig.suptitle(f"paired on the same chips: {dim} {a} vs {b} — hardware: {hw} ({int(confidence * 100)} % intervals)")
    fig.tight_layout()
    return fig
