"""``mcstudy report``: one HTML page over a store — summary tables with confidence
intervals, figures (PNG files beside the page) and the study's provenance.

Names in a study file are user input: everything the page shows is HTML-escaped, and
figure files are named by number, never by a study's names.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from ..errors import McStudyError
from .plots import plot_distributions, plot_paired, plot_tolerance, plot_yield, swept_parameters
from .stats import chip_yield_ci, headline, in_percent, lower_is_better, quantiles_ci, yield_rule
from .tolerance import tolerance

MAX_HARDWARE_FIGURES = 8  # per-population figures beyond this many populations are left out (the tables keep all)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+4) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #666; font-size: 0.9em; }
"""


def summary_with_intervals(ds: xr.Dataset, confidence: float = 0.95, n_boot: int = 500) -> pd.DataFrame:
    """One row per variant × hardware × procedure × time, for the headline metric
    (accuracy unless the study names another): the float model's, yield, and the median and
    the bad tail over chips (5th percentile of an accuracy, 95th of an error), each with its
    interval (accuracies and yields in percent)."""
    metric = headline(ds)
    scale = 100.0 if in_percent(metric) else 1.0
    unit = " %" if scale == 100.0 else ""
    tail = 0.95 if lower_is_better(ds[metric]) else 0.05
    tail_name = f"p{round(tail * 100)}"
    y = chip_yield_ci(ds, confidence=confidence)
    q = quantiles_ci(ds, (0.5, tail), confidence, n_boot)
    rows = []
    labels = dict(zip(ds["time"].values.tolist(), ds["time_label"].values.tolist()))
    for v in ds["variant"].values:
        for h in ds["hardware"].values:
            for p in ds["procedure"].values:
                for t in ds["time"].values:
                    at = {"variant": v, "hardware": h, "procedure": p, "time": t}
                    yc, qc = y.sel(at), q.sel(at)
                    med, p5 = qc.sel(quantile=0.5), qc.sel(quantile=tail)
                    rows.append({
                        "variant": str(v), "hardware": str(h), "procedure": str(p), "time": str(labels[float(t)]),
                        f"float{unit}": scale * float(ds[f"float_{metric}"].sel(variant=v)),
                        f"median{unit}": scale * float(med["estimate"]), "median CI": _ci(med["lower"], med["upper"], scale),
                        f"{tail_name}{unit}": scale * float(p5["estimate"]), f"{tail_name} CI": _ci(p5["lower"], p5["upper"], scale),
                        "yield %": 100 * float(yc["yield"]), "yield CI": _ci(yc["lower"], yc["upper"]),
                        "chips": int(yc["chips"]),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def _ci(lo: Any, hi: Any, scale: float = 100.0) -> str:
    if scale == 100.0:
        return f"{100 * float(lo):.1f}–{100 * float(hi):.1f}"
    return f"{float(lo):.4g}–{float(hi):.4g}"


def write_report(ds: xr.Dataset, out_dir: str | Path, confidence: float = 0.95) -> Path:
    """Write ``index.html`` and ``figures/*.png`` under ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    figures: list[tuple[str, str]] = []  # (file name, caption)

    def save(fig: Figure, caption: str) -> None:
        name = f"figure_{len(figures) + 1:03d}.png"
        fig.savefig(figdir / name, dpi=110)
        plt.close(fig)
        figures.append((name, caption))

    hardware = [str(h) for h in ds["hardware"].values]
    for h in hardware[:MAX_HARDWARE_FIGURES]:
        save(plot_distributions(ds, h), f"{headline(ds).capitalize()} of every chip against drift time — hardware {h}")
        if ds.sizes["time"] > 1:
            save(plot_yield(ds, h, confidence=confidence), f"Yield against drift time — hardware {h}")
        variants, procedures = [str(v) for v in ds["variant"].values], [str(p) for p in ds["procedure"].values]
        for v in variants[1:]:
            save(plot_paired(ds, "variant", v, variants[0], h, confidence), f"Paired difference, variant {v} − {variants[0]} — hardware {h}")
        for p in procedures[1:]:
            save(plot_paired(ds, "procedure", p, procedures[0], h, confidence), f"Paired difference, procedure {p} − {procedures[0]} — hardware {h}")
    tolerance_tables = []
    for param in swept_parameters(ds):
        save(plot_tolerance(ds, param, confidence=confidence), f"Mean {headline(ds)} against {param}")
        if headline(ds) != "accuracy":  # tolerance is defined as an accuracy loss
            tolerance_tables.append((param, pd.DataFrame({"note": [f"tolerance is defined on accuracy; this study's metric is {headline(ds)}"]})))
            continue
        try:
            tol = tolerance(ds, param).to_dataframe().reset_index()
            tolerance_tables.append((param, tol))
        except McStudyError as e:  # a population sweeping two parameters at once: no single-parameter tolerance
            tolerance_tables.append((param, pd.DataFrame({"note": [str(e)]})))

    summary = summary_with_intervals(ds, confidence)
    metric = headline(ds)
    lower = lower_is_better(ds[metric])
    tail_text = "95th" if lower else "5th"
    within_text = yield_rule(float(ds.attrs.get("yield_within", 0.01)), lower)
    attrs = ds.attrs
    versions = json.loads(attrs.get("versions", "{}"))
    models = json.loads(attrs.get("variant_models", "{}"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(str(attrs.get('study_name', 'mcstudy')))} — mcstudy report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(str(attrs.get('study_name', '')))}</h1>",
        f"<p>{esc(str(attrs.get('study_description', '')))}</p>",
        "<table>",
        *(
            f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
            for k, v in [
                ("chips", ds.sizes["chip"]), ("variants", ", ".join(map(str, ds["variant"].values))),
                ("hardware", ", ".join(hardware)), ("procedures", ", ".join(map(str, ds["procedure"].values))),
                ("times", ", ".join(map(str, ds["time_label"].values))), ("seed", attrs.get("seed")),
                ("spec hash", attrs.get("spec_hash")), ("created", attrs.get("created")),
            ]
        ),  # fmt: skip
        "</table>",
        f"<h2>Summary</h2><p class='note'>{esc(metric.capitalize())} over chips; {int(confidence * 100)} % intervals: "
        f"bootstrap for the median and {tail_text} percentile, Wilson for the yield (chips {esc(within_text)}).</p>",
        summary.to_html(index=False, float_format=lambda x: f"{x:.2f}", escape=True),
    ]
    for param, tol in tolerance_tables:
        parts += [f"<h2>Tolerance to {esc(param)}</h2>", "<p class='note'>Largest value with mean accuracy loss under 1 pp (NaN: over it at the smallest value; censored: never over it).</p>"]
        parts.append(tol.to_html(index=False, escape=True))
    parts.append("<h2>Figures</h2>")
    if len(hardware) > MAX_HARDWARE_FIGURES:
        parts.append(f"<p class='note'>Per-population figures for the first {MAX_HARDWARE_FIGURES} of {len(hardware)} hardware populations.</p>")
    for name, caption in figures:
        parts.append(f'<figure><img src="figures/{name}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>')
    parts += [
        "<h2>Provenance</h2>",
        f"<p>Study file: <code>{esc(str(attrs.get('study_path', '')))}</code></p>",
        f"<pre>{esc(str(attrs.get('study_file', '')))}</pre>",
        "<h3>Deployed models</h3>",
        "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v))}</td></tr>" for k, v in models.items()) + "</table>",
        "<h3>Versions</h3>",
        "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in versions.items()) + "</table>",
        "</body></html>",
    ]
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
