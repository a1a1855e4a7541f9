"""The reproduction studies' claims, read from their stores: every comparison a paired
difference over the same chips with its 95 % interval, one per seed.

    python analysis/claims.py deng2022_vat results/deng2022_vat-seed*.zarr

prints a Markdown table per claim (the README's tables are its output). Each study's
function names the comparisons its paper makes; the statistics are mcstudy's own
(``mcstudy.analysis.paired_table``, ``tolerance``). A verdict is left to the reader of
the table: the README states it from the intervals of every seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import xarray as xr

import mcstudy
from mcstudy.analysis import paired_difference, paired_table, tolerance, tolerance_gain

Row = dict[str, str]


def _cell(ds: xr.Dataset, dim: str, a: str, b: str, **at: str) -> str:
    """``a − b`` along ``dim`` at one cell: "+1.23 (+0.80 … +1.66)" in percentage points."""
    sub = ds.sel({k: [v] for k, v in at.items()})
    row = paired_table(sub, dim, a, b).iloc[0]
    return f"{row['difference']:+.2f} ({row['lower']:+.2f} … {row['upper']:+.2f})"


def _pair(ds: xr.Dataset, a: dict[str, object], b: dict[str, object]) -> str:
    """The paired difference between two cells that differ in more than one coordinate
    (e.g. one variant on one population against another on a population with the same
    chips): each cell becomes a "variant" of a two-variant dataset."""
    a, b = {**b, **a}, {**a, **b}  # a coordinate named on one side only is the same on both

    def cell(at: dict[str, object], name: str) -> xr.Dataset:
        one = ds.sel({k: [v] for k, v in at.items()})
        return one.assign_coords({k: [name if k == "variant" else a[k]] for k in at})  # both cells under a's labels

    both = xr.concat([cell(a, "a"), cell(b, "b")], "variant", data_vars="minimal", coords="minimal", compat="override")
    return _cell(both, "variant", "a", "b")


def _median(ds: xr.Dataset, **at: str) -> str:
    return f"{100 * float(ds['accuracy'].sel(at).median('chip')):.1f}"


def _table(rows: list[Row]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _hw(ds: xr.Dataset, base: str, **swept: float) -> str:
    """The hardware entry of population ``base`` at the swept values ``swept``."""
    for name, pop in zip(ds["hardware"].values, ds["population"].values):
        if pop == base and all(abs(float(ds[k].sel(hardware=name)) - v) < 1e-12 for k, v in swept.items()):
            return str(name)
    raise KeyError(f"no population {base} at {swept}")


def deng2022_vat(stores: list[xr.Dataset]) -> str:
    sigmas = (0.1, 0.2, 0.3)

    def vat(sw: float) -> str:
        return f"vat_4bit[variation.within.sigma={sw:g}]"

    def matched(sw: float) -> str:
        return f"noise_matched[variation.within.sigma={sw:g}]"

    rows: list[Row] = []
    search: list[Row] = []
    for ds in stores:
        for sb in (0.0, 0.2):
            for sw in sigmas:
                h = _hw(ds, "dev_4bit", variation_within_sigma=sw, variation_between_sigma=sb)
                at = dict(hardware=h, procedure="inference")
                rows.append({
                    "seed": str(ds.attrs["seed"]), "σ_within": f"{sw:g}", "σ_between": f"{sb:g}",
                    "VAT median %": _median(ds.sel(time=ds.time[0]), variant=vat(0.2), **at),
                    "VAT − QAT": _cell(ds, "variant", vat(0.2), "qat_4bit", **at),
                    "VAT − noise injection": _cell(ds, "variant", vat(0.2), "noise_injection", **at),
                    "VAT − float": _cell(ds, "variant", vat(0.2), "float", **at),
                })  # fmt: skip
                # the same noise terms and the same σ search for both: each trained σ, and each method's best of three
                x = ds.isel(time=0).sel(**at)["accuracy"].mean("chip")
                best_vat = max(sigmas, key=lambda s_: float(x.sel(variant=vat(s_))))
                best_ni = max(sigmas, key=lambda s_: float(x.sel(variant=matched(s_))))
                search.append({
                    "seed": str(ds.attrs["seed"]), "σ_within": f"{sw:g}", "σ_between": f"{sb:g}",
                    **{f"VAT − matched, trained σ {t:g}": _cell(ds, "variant", vat(t), matched(t), **at) for t in sigmas},
                    "best VAT − best matched": f"{_cell(ds, 'variant', vat(best_vat), matched(best_ni), **at)} (σ {best_vat:g} / {best_ni:g})",
                })  # fmt: skip
    between: list[Row] = []
    for ds in stores:
        for sw in sigmas:
            with_b = _hw(ds, "dev_4bit", variation_within_sigma=sw, variation_between_sigma=0.2)
            without = _hw(ds, "dev_4bit", variation_within_sigma=sw, variation_between_sigma=0.0)
            cells = {v: _cell(ds, "hardware", with_b, without, variant=v, procedure="inference") for v in (vat(0.2), "qat_4bit", "float")}
            between.append({"seed": str(ds.attrs["seed"]), "σ_within": f"{sw:g}", **{f"{v}: with − without σ_between 0.2": c for v, c in cells.items()}})
    return (_table(rows) + "\n\nVAT against weight-noise injection with the same noise terms (noise_matched: float weights, "
            "VAT's lognormal within- and between-chip draws; what remains between them is VAT's quantisation-aware training, "
            "and with it its trained weight ranges) and the same σ search (best of three by mean accuracy on the evaluated "
            "population and test set — the same optimistic selection for both):\n\n" + _table(search)
            + "\n\nBetween-chip variation, paired over the same chips:\n\n" + _table(between))


def deng2022_selftune(stores: list[xr.Dataset]) -> str:
    rows: list[Row] = []
    for ds in stores:
        for h in map(str, ds["hardware"].values):
            if h == "within_only":
                continue
            for t, label in zip(ds["time"].values, ds["time_label"].values):
                if h != "pcm_drift" and float(t) != float(ds["time"][0]):
                    continue  # no drift: every time is the same read
                at = dict(hardware=h, time=float(t), variant="qat_4bit")
                row = {"seed": str(ds.attrs["seed"]), "population": h, "time": str(label), "inference %": _median(ds, procedure="inference", **at)}
                if h != "pcm_drift":  # the same chips without the between-chip component
                    ref = dict(hardware="within_only", time=float(t), variant="qat_4bit", procedure="inference")
                    row["within only %"] = _median(ds, **ref)
                    row["between-chip loss"] = _pair(ds, dict(at, procedure="inference"), ref)
                    row["self-tuned − within only"] = _pair(ds, dict(at, procedure="self_tuning"), ref)
                else:
                    row["within only %"] = row["between-chip loss"] = row["self-tuned − within only"] = "—"
                row["self-tuning − inference"] = _cell(ds, "procedure", "self_tuning", "inference", **at)
                row["tuned 10 s before − inference"] = _cell(ds, "procedure", "self_tuning_lead", "inference", **at)
                row["tuned once − inference"] = _cell(ds, "procedure", "self_tuning_once", "inference", **at)
                row["layer scale − inference"] = _cell(ds, "procedure", "self_tuning_scale", "inference", **at)
                row["drift compensation − inference"] = _cell(ds, "procedure", "drift_compensation", "inference", **at)
                row["tuned 10 s before − drift compensation"] = _cell(ds, "procedure", "self_tuning_lead", "drift_compensation", **at)
                rows.append(row)
    return _table(rows)


def _jia_beyond(ds: xr.Dataset, parameter: str, tolerance_of_inference: float) -> Row:
    """Each procedure − inference, paired over the chips, at the first swept value above
    inference's tolerance (where the claim matters: inference has lost more than 1 pp)."""
    coord = parameter.replace(".", "_")
    values = sorted({float(v) for v in ds[coord].values if float(v) > 0})
    at = next((v for v in values if v > tolerance_of_inference), values[-1])
    name = next(str(h) for h in ds["hardware"].values if abs(float(ds[coord].sel(hardware=h)) - at) < 1e-12)
    x = ds.isel(variant=0, time=0)
    row: Row = {"seed": str(ds.attrs["seed"]), "parameter": f"{parameter.split('.', 1)[1]} = {at:g}",
                "inference %": f"{100 * float(x['accuracy'].sel(hardware=name, procedure='inference').mean('chip')):.1f}"}  # fmt: skip
    for p in (*JIA_PROCEDURES, "self_tuning"):
        row[f"{p} − inference"] = _cell(ds.isel(variant=[0], time=[0]), "procedure", p, "inference", hardware=name)
    return row


JIA_PROCEDURES = ("insitu_8bit", "insitu_last_layer", "insitu_trims", "insitu_float")
JIA_PARAMETERS = ("periphery.op_drift.offset", "periphery.op_drift.gain", "periphery.mismatch.gain")


def _tolerances(ds: xr.Dataset, parameter: str, procedures: tuple[str, ...], resamples: int = 1000) -> tuple[Row, float]:
    """Each procedure's tolerance with a 95 % bootstrap interval over the chips, and its
    relative gain over inference with the interval of the paired gain (``≥``: censored,
    never over the threshold on the swept grid). Also inference's point tolerance."""
    point = tolerance(ds, parameter, threshold=0.01).isel(variant=0, time=0).squeeze(drop=True)
    boot = tolerance(ds, parameter, threshold=0.01, resamples=resamples, seed=0).isel(variant=0, time=0).squeeze(drop=True)
    base = float(point["tolerance"].sel(procedure="inference"))

    def interval(x: xr.DataArray) -> str:
        if bool(x.isnull().any()):  # some draws are over the threshold at the smallest swept value
            return f"< {float(ds[parameter.replace('.', '_')].min()):g} in {int(x.isnull().sum())} of {x.sizes['resample']} draws"
        lo, hi = (float(v) for v in x.quantile([0.025, 0.975], "resample").values)
        return f"{lo:.3f} … {hi:.3f}"

    row: Row = {"seed": str(ds.attrs["seed"]), "parameter": parameter.split(".", 1)[1],
                "inference": f"{base:.3f} ({interval(boot['tolerance'].sel(procedure='inference'))})"}  # fmt: skip
    for p in procedures:
        value = float(point["tolerance"].sel(procedure=p))
        cens = "≥ " if bool(point["censored"].sel(procedure=p)) else ""
        gains = tolerance_gain(boot, p)
        lo, hi = (100 * float(v) for v in gains.quantile([0.025, 0.975], "resample", skipna=False).values)
        gain = f"{lo:+.0f} … {hi:+.0f} %" if bool(gains.notnull().all()) else "no interval: some draws have no tolerance"
        row[p] = f"{cens}{value:.3f} ({interval(boot['tolerance'].sel(procedure=p))}); {cens}{100 * (value / base - 1):+.0f} % ({gain})"
    return row, base


def jia2018_insitu(stores: list[xr.Dataset]) -> str:
    rows: list[Row] = []
    beyond: list[Row] = []
    for ds in stores:
        for parameter in JIA_PARAMETERS:
            row, base = _tolerances(ds, parameter, (*JIA_PROCEDURES, "self_tuning"))
            rows.append(row)
            beyond.append(_jia_beyond(ds, parameter, base))
    costs: list[Row] = []
    ds = stores[0]
    for p in JIA_PROCEDURES:
        cell = ds.sel(procedure=p).isel(variant=0, hardware=0, time=0, chip=0)
        mem, fmem = float(cell["learn_memory_bits"]), float(cell["float_memory_bits"])
        energy, fenergy = float(cell["learn_energy_pj"]), float(cell["float_energy_pj"])
        costs.append({
            "procedure": p, "memory bits": f"{mem:,.0f}", "of float's": f"{100 * mem / fmem:.1f} %",
            "multiply energy nJ": f"{energy / 1e3:,.1f}", "float's / this": f"{fenergy / energy:.1f}×",
        })  # fmt: skip
    return ("Tolerance (95 % bootstrap interval over the chips); gain over inference (interval of the paired gain):\n\n" + _table(rows)
            + "\n\nMean accuracy gain (pp, paired over the chips) at the first swept value above inference's tolerance:\n\n"
            + _table(beyond) + "\n\nAccounting (memory = stored values × bits; energy = multiplies × Horowitz 2014):\n\n" + _table(costs))


def jia2018_lr_selection(stores: list[xr.Dataset]) -> str:
    """The learning rate for jia2018_insitu.yaml: in-situ learning's tolerance at each rate,
    per population, and its mean over the populations (the criterion)."""
    rows: list[Row] = []
    for ds in stores:
        rates = [str(p) for p in ds["procedure"].values if str(p).startswith("insitu_lr")]
        means = {r: 0.0 for r in rates}
        for parameter in JIA_PARAMETERS:
            tol = tolerance(ds, parameter, threshold=0.01).isel(variant=0, time=0).squeeze(drop=True)
            row = {"seed": str(ds.attrs["seed"]), "parameter": parameter.split(".", 1)[1],
                   "inference": f"{float(tol['tolerance'].sel(procedure='inference')):.3f}"}  # fmt: skip
            for r in rates:
                value = float(tol["tolerance"].sel(procedure=r))
                scale = float(tol["tolerance"].sel(procedure="inference"))
                means[r] += value / scale / len(JIA_PARAMETERS)  # a censored tolerance counts at its lower bound
                row[r.removeprefix("insitu_")] = f"{'≥ ' if bool(tol['censored'].sel(procedure=r)) else ''}{value:.3f}"
            rows.append(row)
        rows.append({"seed": str(ds.attrs["seed"]), "parameter": "mean tolerance / inference's", "inference": "1.000",
                     **{r.removeprefix("insitu_"): f"{m:.3f}" for r, m in means.items()}})  # fmt: skip
    return _table(rows)


def obradovic2018_hwa(stores: list[xr.Dataset]) -> str:
    rows: list[Row] = []
    for ds in stores:
        for bits in (2, 3, 4):
            for beta in (1.0, 2.0, 3.0):
                hw = _hw(ds, f"hw_{bits}bit", mapping_nonlinearity=beta)
                pre = _hw(ds, f"pre_{bits}bit", mapping_nonlinearity=beta)
                hwa = f"hwa_{bits}bit"
                float_acc = 100 * float(ds["float_accuracy"].sel(variant="float"))
                x = ds.isel(time=0, procedure=0)
                hwa_acc = 100 * float(x["accuracy"].sel(variant=hwa, hardware=hw).mean("chip"))
                plain = 100 * float(x["accuracy"].sel(variant="float", hardware=hw).mean("chip"))
                predist = 100 * float(x["accuracy"].sel(variant="float", hardware=pre).mean("chip"))
                qat = f"qat_{bits}bit"
                qat_acc = 100 * float(x["accuracy"].sel(variant=qat, hardware=hw).mean("chip"))
                rows.append({
                    "seed": str(ds.attrs["seed"]), "bits": str(bits), "device β": f"{beta:g}", "float %": f"{float_acc:.1f}",
                    "HWA %": f"{hwa_acc:.1f}", "QAT %": f"{qat_acc:.1f}", "float mapped %": f"{plain:.1f}", "pre-distorted %": f"{predist:.1f}",
                    "HWA − QAT": _cell(ds, "variant", hwa, qat, hardware=hw, procedure="inference"),
                    "HWA − float mapped": _cell(ds, "variant", hwa, "float", hardware=hw, procedure="inference"),
                    "HWA − pre-distorted": _pair(ds, dict(variant=hwa, hardware=hw, procedure="inference"), dict(variant="float", hardware=pre)),
                })  # fmt: skip
    return _table(rows)


def garcia_redondo2020_unipolar(stores: list[xr.Dataset]) -> str:
    rows: list[Row] = []
    for ds in stores:
        reports = json.loads(ds.attrs.get("training_reports", "{}"))
        for bits in (2, 4):
            d, u = f"rram_differential[mapping.bits={bits}]", f"rram_unipolar[mapping.bits={bits}]"
            cells = {
                "differential": dict(variant=f"differential[bits={bits}]", hardware=d, procedure="inference"),
                "unipolar_equal": dict(variant=f"unipolar_equal[bits={bits}]", hardware=u, procedure="inference"),
                "unipolar_half": dict(variant=f"unipolar_half[bits={bits}]", hardware=u, procedure="inference"),
            }
            counts = {v: reports.get(c["variant"], []) for v, c in cells.items()}

            def chosen(v: str, counts: dict = counts) -> dict:
                rep = counts[v]
                return max(rep, key=lambda r: r.get("calibration_accuracy", 0)) if rep else {}

            row = {"seed": str(ds.attrs["seed"]), "bits": str(bits)}
            for v, at in cells.items():
                c = chosen(v)
                row[f"{v} % (devices, ADCs)"] = f"{_median(ds.isel(time=0), **at)} ({c.get('devices', '?')}, {c.get('adcs', '?')})"
            row["equal − differential"] = _pair(ds, dict(cells["unipolar_equal"]), dict(cells["differential"]))
            row["half − differential"] = _pair(ds, dict(cells["unipolar_half"]), dict(cells["differential"]))
            rows.append(row)
    return _table(rows)


def mackin2022_programming(stores: list[xr.Dataset], cache_dir: Path | None = None) -> str:
    rows: list[Row] = []
    for ds in stores:
        for v in map(str, ds["variant"].values):
            for t, label in zip(ds["time"].values, ds["time_label"].values):
                at = dict(variant=v, time=float(t), procedure="compensated")
                rows.append({
                    "seed": str(ds.attrs["seed"]), "network": v, "time": str(label),
                    "naive %": _median(ds, hardware="pcm_naive", **at), "equal %": _median(ds, hardware="pcm_equal", **at),
                    "optimised %": _median(ds, hardware="pcm_optimised", **at),
                    "optimised − equal": _cell(ds, "hardware", "pcm_optimised", "pcm_equal", **at),
                    "optimised − naive": _cell(ds, "hardware", "pcm_optimised", "pcm_naive", **at),
                })  # fmt: skip
    strategies = {}
    for ds in stores:
        raw = json.loads(ds.attrs.get("programming_strategies", "{}")).get("pcm_optimised", {})
        strategies[str(ds.attrs["seed"])] = {v: f"F = {s['significance']:.2f}, scale = {s['scale']:.2f}" for v, s in raw.items()}
    out = _table(rows) + "\n\nStrategies found: " + json.dumps(strategies)
    if cache_dir is not None:
        out += "\n\n" + _mackin_weight_errors(stores, cache_dir)
    return out


def _mackin_weight_errors(stores: list[xr.Dataset], cache_dir: Path, replicates: int = 32) -> str:
    """The search's objective — the normalised squared weight error after global drift
    compensation — of the naive, equal and optimised strategies at every time, on
    ``replicates`` fresh programming and read-noise streams (the search used one other
    stream, so these are out of sample), paired replicate by replicate. Needs the trained
    networks: from ``cache_dir`` (the run's model cache), trained again where absent."""
    import dataclasses

    import numpy as np

    from mcstudy.analog import AnalogNetwork
    from mcstudy.data import load_dataset
    from mcstudy.programming import Strategy
    from mcstudy.programming.study import objective_for
    from mcstudy.spec import format_time, parse_study
    from mcstudy.training import ModelCache, train_or_load

    rows: list[Row] = []
    for ds in stores:
        spec = parse_study(ds.attrs["study_file"], source=str(ds.attrs["study_path"]), base_dir=Path("studies"), seed=int(ds.attrs["seed"]))
        data = load_dataset(spec.data, spec.seed)
        found = json.loads(ds.attrs["programming_strategies"])["pcm_optimised"]
        for variant in spec.variants:
            ms = spec.model_of(variant)
            trained = train_or_load(ms.name, ms.params, variant.trainer.name, variant.trainer.params, data, spec.seed, ModelCache(cache_dir))
            net = AnalogNetwork.from_state(ms.name, trained.model_params or ms.params, trained.state_dict, data.input_shape, data.n_classes)
            objective = objective_for(net, spec.population("pcm_optimised"), spec.times, net.layer_ranges(trained.ranges))
            strategies = {"pcm_naive": Strategy.naive(), "pcm_equal": Strategy.equal(),
                          "pcm_optimised": Strategy.from_dict(found[variant.name], f"pcm_optimised/{variant.name}")}  # fmt: skip
            err = np.array([[dataclasses.replace(objective, seed=1_000_000 + k).errors(s) for k in range(replicates)] for s in strategies.values()])
            e = xr.Dataset({"weight_error": (("hardware", "chip", "time"), err)},
                           coords={"hardware": list(strategies), "time": list(spec.times)})  # fmt: skip
            vs_naive = paired_difference(e, "hardware", "pcm_optimised", "pcm_naive", metric="weight_error")
            vs_equal = paired_difference(e, "hardware", "pcm_optimised", "pcm_equal", metric="weight_error")
            mean = e["weight_error"].mean("chip")
            def diff(d: xr.Dataset, t: float) -> str:
                c = d.sel(time=t)
                return f"{float(c['mean']):+.4f} ({float(c['lower']):+.4f} … {float(c['upper']):+.4f})"

            for t in spec.times:
                rows.append({
                    "seed": str(spec.seed), "network": variant.name, "time": format_time(t),
                    **{f"{h.removeprefix('pcm_')}": f"{float(mean.sel(hardware=h, time=t)):.4f}" for h in strategies},
                    "optimised − naive": diff(vs_naive, t), "optimised − equal": diff(vs_equal, t),
                })  # fmt: skip
    return f"Weight error after global drift compensation, {replicates} fresh programming streams per cell (paired):\n\n" + _table(rows)


STUDIES: dict[str, Callable[[list[xr.Dataset]], str]] = {
    f.__name__: f
    for f in (deng2022_vat, deng2022_selftune, jia2018_insitu, jia2018_lr_selection, obradovic2018_hwa, garcia_redondo2020_unipolar, mackin2022_programming)
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("stores", nargs="+", help="the study's stores, one per seed")
    ap.add_argument("--cache-dir", type=Path, help="mackin2022_programming: the runs' model cache, for the weight-error table")
    args = ap.parse_args(argv)
    stores = sorted((mcstudy.open_results(s).load() for s in args.stores), key=lambda d: int(d.attrs["seed"]))
    extra = {"cache_dir": args.cache_dir} if args.cache_dir is not None and args.study == "mackin2022_programming" else {}
    print(STUDIES[args.study](stores, **extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
