"""Per-chip statistics the run summary prints: median, 5th percentile and yield."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from rich.table import Table

from .stats import headline, lower_is_better, passing_chips, yield_rule, yield_threshold


def chip_yield(accuracy: xr.DataArray, float_accuracy: xr.DataArray, within: float = 0.01) -> xr.DataArray:
    """Fraction of chips whose accuracy is within ``within`` (absolute, e.g. 0.01 = 1
    percentage point) of the float model's — for an error (``mse``, ``mae``: lower is
    better), at most ``1 + within`` times the float model's; chips not yet evaluated are
    left out (the yield of :func:`chip_yield_ci`, without its interval)."""
    k, n = passing_chips(accuracy, yield_threshold(accuracy, float_accuracy, within))
    return k / n


def summary_table(ds: xr.Dataset, within: float | None = None) -> pd.DataFrame:
    """One row per variant × hardware × procedure × time, for the headline metric (the
    study's ``metric``, accuracy by default): the float model's, the median and the 5th
    percentile over chips (95th for an error: the bad tail), yield, and how many chips
    were evaluated."""
    within = float(ds.attrs.get("yield_within", 0.01)) if within is None else within
    metric = headline(ds)
    acc = ds[metric].load()
    tail = 0.95 if lower_is_better(acc) else 0.05
    tail_name = "p95" if lower_is_better(acc) else "p5"
    stats = xr.Dataset(
        {
            "float": ds[f"float_{metric}"].load().broadcast_like(acc.isel(chip=0, drop=True)),
            "median": acc.median("chip", skipna=True),
            tail_name: acc.quantile(tail, dim="chip", skipna=True).drop_vars("quantile"),
            "yield": chip_yield(acc, ds[f"float_{metric}"], within),
            "chips": acc.notnull().sum("chip"),
        }
    )
    keep = ["variant", "hardware", "procedure", "time"]
    df = stats.to_dataframe().reset_index()
    df["time_label"] = np.asarray(ds["time_label"].values)[np.searchsorted(ds["time"].values, df["time"].values)]
    return df[[*keep, "time_label", "float", "median", tail_name, "yield", "chips"]]


def render_summary(df: pd.DataFrame, within: float, title: str, metric: str = "accuracy", lower: bool = False) -> Table:
    """The end-of-run table: one row per variant × population × procedure × time, for the
    headline ``metric`` (``lower``: an error, where smaller is better)."""
    table = Table(title=f"{title}: {metric} over chips (yield = share {yield_rule(within, lower)})")
    for col, justify in (("variant", "left"), ("hardware", "left"), ("procedure", "left"), ("time", "right"),
                         ("float", "right"), ("median", "right"), ("p95" if lower else "p5", "right"), ("yield", "right"), ("chips", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    last = None
    for row in df.to_dict("records"):
        key = (str(row["variant"]), str(row["hardware"]), str(row["procedure"]))
        if last is not None and key[:2] != last[:2]:
            table.add_section()
        shown = key if key != last else ("", "", "")
        last = key
        table.add_row(
            *shown, str(row["time_label"]), f"{row['float']:.4f}", f"{row['median']:.4f}", f"{row['p95' if lower else 'p5']:.4f}",
            f"{row['yield'] * 100:.1f}%", str(int(row["chips"])),
        )  # fmt: skip
    return table
