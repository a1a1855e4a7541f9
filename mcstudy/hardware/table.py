"""A PCM-like device whose statistics come from measured points.

σ_prog (µS), μ_ν and σ_ν are interpolated linearly in the normalised target
conductance g from points given in the study file (``points``) or a CSV file
(``csv``, columns ``g, sigma_prog, mu_nu, sigma_nu``; a relative path is relative to the
study file); outside the measured range the end values hold. Drift and 1/f read noise
then follow the PCM equations (Nandakumar et al. 2019; Joshi et al. 2020) with the constants of :class:`~mcstudy.hardware.pcm.PCMDriftReadParams`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

import torch
from pydantic import Field, model_validator

from ..registry import FileParamError, Params
from ..rng import Stream, draw_normal
from .base import DEVICES, DeviceModel, DeviceState
from .pcm import PCMDriftReadParams, drifted_and_sigma, read_noise_correlation, vector_fresh_fraction
from ..location import study_relative

COLUMNS = ("g", "sigma_prog", "mu_nu", "sigma_nu")


class TablePoints(Params):
    g: tuple[float, ...] = Field(min_length=1, description="normalised target conductances, increasing in [0, 1]")
    sigma_prog: tuple[float, ...] = Field(description="programming noise σ at each g, µS at the device's g_max")
    mu_nu: tuple[float, ...] = Field(description="mean drift exponent at each g")
    sigma_nu: tuple[float, ...] = Field(description="spread of the drift exponent at each g")

    @model_validator(mode="after")
    def _check(self) -> "TablePoints":
        n = len(self.g)
        for name in COLUMNS[1:]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values, g has {n}")
            if any(v < 0 for v in getattr(self, name)):
                raise ValueError(f"{name} must be >= 0")
        if any(b <= a for a, b in zip(self.g, self.g[1:])) or self.g[0] < 0 or self.g[-1] > 1:
            raise ValueError("g must increase strictly within [0, 1]")
        return self


class TableParams(PCMDriftReadParams):
    points: TablePoints | None = Field(None, description="the measured points inline (or give csv)")
    csv: str | None = Field(None, description="CSV file with columns g, sigma_prog, mu_nu, sigma_nu")

    @model_validator(mode="after")
    def _one_source(self) -> "TableParams":
        if (self.points is None) == (self.csv is None):
            raise ValueError("give the measured points either as 'points' or as a 'csv' file, not both")
        return self

    def resolve(self, base_dir: Path | None) -> "TableParams":
        """Load the CSV (relative to ``base_dir``) into ``points``."""
        if self.csv is None or self.points is not None:
            return self
        path = study_relative(self.csv, base_dir)
        try:
            points = load_table_csv(path)
        except ValueError as e:
            raise FileParamError("csv", str(e)) from None
        return self.model_copy(update={"points": points, "csv": str(path)})


def load_table_csv(path: Path) -> TablePoints:
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    if path.is_file() and path.stat().st_size > 1 << 20:
        raise ValueError(f"{path} has {path.stat().st_size:,} bytes; a table of measured points has at most 1 MiB")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise ValueError(f"{path} needs a header with columns {', '.join(COLUMNS)}")
    try:
        cols = {c: tuple(float(r[c]) for r in rows) for c in COLUMNS}
    except (TypeError, ValueError):
        raise ValueError(f"{path} has a value that is not a number") from None
    return TablePoints(**cols)


def interp(x: torch.Tensor, xp: tuple[float, ...], fp: tuple[float, ...]) -> torch.Tensor:
    """Piecewise-linear interpolation, constant beyond the end points (like numpy.interp)."""
    xs = torch.tensor(xp, dtype=x.dtype, device=x.device)
    fs = torch.tensor(fp, dtype=x.dtype, device=x.device)
    if len(xp) == 1:
        return fs.expand_as(x).clone()
    xc = x.clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, xc.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xs[i - 1], xs[i], fs[i - 1], fs[i]
    return f0 + (f1 - f0) * (xc - x0) / (x1 - x0)


@DEVICES.register("table", TableParams)
class TableDevice(DeviceModel):
    """PCM-like device with programming noise and drift statistics from measured points."""

    params: TableParams
    EXAMPLE = {"points": {"g": (0.0, 0.5, 1.0), "sigma_prog": (0.2, 1.0, 0.6), "mu_nu": (0.1, 0.06, 0.05), "sigma_nu": (0.04, 0.02, 0.01)}}


    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        p = self.params
        pts = p.points
        if pts is None:
            raise RuntimeError("table device used before its CSV was loaded (TableParams.resolve)")
        g = (g_target / p.g_max).clamp(0.0, 1.0)
        sigma = interp(g, pts.g, pts.sigma_prog) * p.prog_noise_scale
        g_prog = (g_target + sigma * draw_normal(rng, g_target, "prog")).clamp(min=0.0)
        nu = (interp(g, pts.g, pts.mu_nu) + interp(g, pts.g, pts.sigma_nu) * draw_normal(rng, g_target, "nu")).abs()
        return {"g_prog": g_prog, "nu": nu * p.drift_scale}

    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return drifted_and_sigma(state["g_prog"], state["nu"], t, self.params)

    def vector_fresh_fraction(self, t: float) -> float:
        return vector_fresh_fraction(t, self.params)

    def read_noise_correlation(self, times: Sequence[float], vector: bool = False) -> np.ndarray | None:
        return read_noise_correlation(times, self.params, vector)
