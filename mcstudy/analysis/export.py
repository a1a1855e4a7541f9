"""Export a store to Parquet: one row per (variant, hardware, procedure, time, chip).

Every coordinate is a column (names, trainer, population, device, mapping, weight
scale, procedure kind, swept parameters, time in seconds and its label), then every per-chip metric,
the variant's float metrics and the chip's recorded draws. Written with pyarrow one
(variant, hardware) block at a time, so a store larger than memory exports in bounded
memory; the file reads with pandas, pyarrow or DuckDB without mcstudy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from ..errors import McStudyError
from ..vocabulary import RESULT_DIMS

DIMS5 = RESULT_DIMS


def _columns(ds: xr.Dataset) -> tuple[list[str], list[str], list[str]]:
    """Per-chip metrics, per-variant float metrics, per-(hardware, chip) draws."""
    metrics = [str(n) for n, v in ds.data_vars.items() if v.dims == DIMS5]
    floats = [str(n) for n, v in ds.data_vars.items() if v.dims == ("variant",)]
    draws = [str(n) for n, v in ds.data_vars.items() if v.dims == ("hardware", "chip")]
    return metrics, floats, draws


def export_parquet(ds: xr.Dataset, path: str | os.PathLike[str], only_done: bool = True) -> int:
    """Write the store's per-chip rows to ``path``; returns the number of rows. With
    ``only_done`` (default) chips not yet evaluated are left out."""
    metrics, floats, draws = _columns(ds)
    if not metrics:
        raise McStudyError("this dataset has no per-chip metrics to export")
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial")
    P, T, C = ds.sizes["procedure"], ds.sizes["time"], ds.sizes["chip"]
    proc_i, time_i, chip_i = (a.ravel() for a in np.meshgrid(np.arange(P), np.arange(T), np.arange(C), indexing="ij"))
    coords_by_dim = {d: [str(c) for c in ds.coords if ds[c].dims == (d,)] for d in ("variant", "hardware", "procedure", "time")}
    pair_coords = [str(c) for c in ds.coords if set(ds[c].dims) == {"variant", "hardware"}]  # e.g. weight_scale_used
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for vi in range(ds.sizes["variant"]):
            for hi in range(ds.sizes["hardware"]):
                cell = ds.isel(variant=vi, hardware=hi).load()
                keep = np.ones(P * T * C, dtype=bool)
                if only_done and "done" in ds:
                    keep = np.asarray(cell["done"].values)[chip_i]
                if not keep.any():
                    continue
                cols: dict[str, np.ndarray] = {d: np.empty(0) for d in DIMS5}  # the dimensions first
                for name in coords_by_dim["variant"]:
                    cols[name] = np.repeat(np.asarray(cell[name].values), P * T * C)
                for name in coords_by_dim["hardware"] + pair_coords:
                    cols[name] = np.repeat(np.asarray(cell[name].values), P * T * C)
                for name in coords_by_dim["procedure"]:
                    cols[name] = np.asarray(ds[name].values)[proc_i]
                for name in coords_by_dim["time"]:
                    cols[name] = np.asarray(ds[name].values)[time_i]
                cols["chip"] = np.asarray(ds["chip"].values)[chip_i]
                for m in metrics:
                    cols[m] = np.asarray(cell[m].transpose("procedure", "time", "chip").values).ravel()
                for f in floats:
                    cols[f] = np.repeat(np.asarray(cell[f].values), P * T * C)
                for d in draws:
                    cols[d] = np.asarray(cell[d].values)[chip_i]
                table = pa.table({k: _arrow(v[keep]) for k, v in cols.items()})
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)  # a failed export leaves nothing behind
        raise
    if writer is None:
        raise McStudyError("no evaluated chips in this store yet: nothing to export")
    writer.close()
    os.replace(tmp, out)
    return rows


def _arrow(values: np.ndarray) -> pa.Array:
    if values.dtype.kind in "OUT":
        return pa.array([str(v) for v in values], type=pa.string())
    return pa.array(values)
