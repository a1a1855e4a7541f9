"""The study schema: valid files load; every kind of mistake names its field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mcstudy import SpecError, load_study, parse_study
from mcstudy.spec import format_time, parse_time

from .conftest import QUICKSTART, run_cli


def dump(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


def quickstart_raw() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_quickstart_is_valid() -> None:
    spec = load_study(QUICKSTART)
    assert spec.name == "quickstart"
    assert spec.chips >= 200
    assert spec.times == (20.0, 3600.0, 86400.0, 365 * 86400.0)
    assert [v.name for v in spec.variants] == ["float", "noise_injection"]
    assert [p.kind.name for p in spec.procedures] == ["inference", "drift_compensation"]
    assert spec.hardware[0].device.name == "pcm"


@pytest.mark.parametrize(
    "text, seconds",
    [(20, 20.0), (1.5, 1.5), ("20s", 20.0), ("1h", 3600.0), ("1 d", 86400.0), ("2mo", 60 * 86400.0), ("1y", 31536000.0), ("1e3", 1000.0)],
)
def test_time_parsing(text: object, seconds: float) -> None:
    assert parse_time(text) == seconds


def test_time_labels() -> None:
    assert [format_time(t) for t in (20, 3600, 86400, 31536000)] == ["20 s", "1 h", "1 d", "1 y"]


def test_hash_ignores_formatting_and_execution_but_not_science() -> None:
    raw = quickstart_raw()
    base = parse_study(dump(raw)).hash
    raw2 = dict(raw, execution={"block_size": 7, "executor": "serial"}, description="other words")
    assert parse_study(yaml.safe_dump(raw2, default_flow_style=True)).hash == base
    raw3 = quickstart_raw()
    raw3["hardware"]["pcm"]["variation"]["within"]["sigma"] = 0.06
    assert parse_study(dump(raw3)).hash != base


def test_sweep_expands_into_named_populations_with_coordinates() -> None:
    raw = quickstart_raw()
    raw["hardware"]["pcm"]["variation"]["within"]["sigma"] = [0.0, 0.05, 0.1]
    raw["hardware"]["pcm"]["device"] = {"name": "pcm", "drift_scale": [0.5, 1.0]}
    raw["hardware"]["ideal"] = {"device": "ideal"}
    spec = parse_study(dump(raw))
    names = [h.name for h in spec.hardware]
    assert len(names) == 7 and names[-1] == "ideal"
    assert names[0] == "pcm[device.drift_scale=0.5,variation.within.sigma=0]"
    assert {h.base for h in spec.hardware[:6]} == {"pcm"}
    assert spec.hardware_coords["variation_within_sigma"] == (0.0, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0)
    drift = spec.hardware_coords["device_drift_scale"]
    assert drift[:6] == (0.5, 0.5, 0.5, 1.0, 1.0, 1.0) and math.isnan(drift[6])


def test_trainer_sweep_expands_variants() -> None:
    raw = quickstart_raw()
    raw["variants"]["noise_injection"]["sigma"] = [0.05, 0.1]
    spec = parse_study(dump(raw))
    assert [v.name for v in spec.variants] == ["float", "noise_injection[sigma=0.05]", "noise_injection[sigma=0.1]"]
    assert math.isnan(spec.variant_coords["sigma"][0]) and spec.variant_coords["sigma"][1:] == (0.05, 0.1)


def test_list_on_a_non_numeric_field_is_not_a_sweep() -> None:
    raw = quickstart_raw()
    raw["hardware"]["pcm"]["variation"]["within"]["kind"] = ["lognormal", "normal"]
    with pytest.raises(SpecError, match=r"hardware\.pcm\.variation\.within\.kind"):
        parse_study(dump(raw))


def _mutate(path: str, value: object):
    def apply(raw: dict) -> dict:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        return raw

    return apply


BAD_INPUTS = [
    ("unknown top-level key", _mutate("chipz", 10), "chipz", "unknown key"),
    ("unknown nested key", _mutate("hardware.pcm.variation.within.sigmaa", 0.1), "hardware.pcm.variation.within.sigmaa", "unknown key"),
    ("wrong type", _mutate("chips", "many"), "chips", "integer"),
    ("string number", _mutate("seed", "3"), "seed", "integer"),
    ("negative sigma", _mutate("hardware.pcm.variation.within.sigma", -0.1), "hardware.pcm.variation.within.sigma", ">= 0"),
    ("zero chips", _mutate("chips", 0), "chips", "> 0"),
    ("negative time", _mutate("times", [20, -5]), "times.1", "> 0"),
    ("non-numeric time", _mutate("times", [20, "soon"]), "times.1", "a time must be"),
    ("duplicate time", _mutate("times", ["1h", 3600]), "times", "duplicate"),
    ("unknown dataset", _mutate("data.dataset", "cifar1000"), "data.dataset", "unknown dataset 'cifar1000'"),
    ("unknown model", _mutate("model.name", "transformer9"), "model.name", "unknown model 'transformer9'"),
    ("unknown device", _mutate("hardware.pcm.device", "memristor9"), "hardware.pcm.device.name", "unknown device 'memristor9'"),
    ("unknown trainer", _mutate("variants.float.trainer", "magic"), "variants.float.trainer", "unknown trainer 'magic'"),
    ("unknown procedure", _mutate("procedures.global_compensation.kind", "prayer"), "procedures.global_compensation.kind", "unknown procedure 'prayer'"),
    ("bad device parameter", _mutate("hardware.pcm.device", {"name": "pcm", "t0": -1}), "hardware.pcm.device.t0", "> 0"),
    ("bad trainer parameter", _mutate("variants.float.epochs", 0), "variants.float.epochs", "> 0"),
    ("bad name", _mutate("variants.bad name", {"trainer": "standard"}), "variants.bad name", "names may use"),
    ("missing root", _mutate("data.dataset", "mnist"), "data.root", "set data.root"),
    ("trained scale without ranges", _mutate("hardware.pcm.weight_scale", "trained"), "hardware.pcm.weight_scale", "variant 'float' uses 'standard'"),
    ("mapping below the device's off state", _mutate("hardware.pcm", {"device": "rram", "mapping": {"on_off_ratio": 100}}), "hardware.pcm.mapping.on_off_ratio", "below the device's off state"),
    ("unknown weight scale", _mutate("hardware.pcm.weight_scale", "column"), "hardware.pcm.weight_scale", "'auto', 'trained', 'layer' or 'tile'"),
    ("tuning read before programming", _mutate("procedures.tune", {"kind": "self_tuning", "lead": "30s"}), "procedures.tune", "at or before programming"),
    ("lead with a single tuning", _mutate("procedures.tune", {"kind": "self_tuning", "when": "once", "lead": "10s"}), "procedures.tune", "lead is for when: every_time"),
    ("tuning after every time", _mutate("procedures.tune", {"kind": "self_tuning", "when": "once", "tune_time": "2y"}), "procedures.tune", "after every study time"),
    ("negative duration with a unit", _mutate("procedures.tune", {"kind": "self_tuning", "lead": "-10s"}), "procedures.tune.lead", ">= 0"),
]


@pytest.mark.parametrize("label, mutate, field, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_field(label: str, mutate, field: str, message: str) -> None:
    raw = mutate(quickstart_raw())
    with pytest.raises(SpecError) as info:
        parse_study(dump(raw))
    problems = dict(info.value.problems)
    assert field in problems, problems
    assert message in problems[field], problems[field]


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    text = QUICKSTART.read_text().replace("  noise_injection:\n    trainer: noise_injection", "  float:\n    trainer: noise_injection")
    with pytest.raises(SpecError) as info:
        parse_study(text)
    assert "variants.float" in dict(info.value.problems)


def test_invalid_yaml_and_non_mapping() -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_study("name: [unclosed")
    with pytest.raises(SpecError, match="must hold a mapping"):
        parse_study("- a\n- b\n")


def test_yaml_is_loaded_safely() -> None:
    evil = "name: !!python/object/apply:os.system ['echo hacked']\n"
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_study(evil)


@pytest.mark.parametrize("label, mutate, field, message", BAD_INPUTS[:: 3], ids=[b[0] for b in BAD_INPUTS[:: 3]])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path, label: str, mutate, field: str, message: str) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text(dump(mutate(quickstart_raw())))
    out = tmp_path / "out.zarr"
    for command in (["validate", study], ["run", study, "--out", out]):
        r = run_cli(*command, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert field in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "results").exists()


def test_cli_validate_ok_and_missing_file(tmp_path: Path) -> None:
    r = run_cli("validate", QUICKSTART)
    assert r.returncode == 0 and "valid study quickstart" in r.stdout
    r = run_cli("validate", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", QUICKSTART, "--chips", "0")
    assert r.returncode == 2 and "--chips" in r.stderr


def test_population_sections_and_sweeps_over_them(tmp_path: Path) -> None:
    raw = quickstart_raw()
    (tmp_path / "dev.csv").write_text("g,sigma_prog,mu_nu,sigma_nu\n0,0.3,0.1,0.04\n1,1.0,0.05,0.01\n")
    raw["hardware"] = {
        "full": {
            "device": {"name": "pcm"},
            "mapping": {"kind": "multi_pair", "bits": 4, "on_off_ratio": 10.0, "significance": 2.0},
            "tile": {"rows": 128, "cols": 64},
            "periphery": {"adc": {"bits": [6, 8]}, "dac": {"bits": 8}, "op_drift": {"gain": 0.02, "granularity": "layer"}},
            "read_noise": "per_vector",
        },
        "measured": {"device": {"name": "table", "csv": "dev.csv"}},
        "levels": {"device": "rram", "mapping": {"bits": [2, 4]}},
    }
    study = tmp_path / "s.yaml"
    study.write_text(dump(raw))
    spec = load_study(study)
    assert [h.name for h in spec.hardware] == [
        "full[periphery.adc.bits=6]", "full[periphery.adc.bits=8]", "measured", "levels[mapping.bits=2]", "levels[mapping.bits=4]",
    ]  # fmt: skip
    assert spec.hardware[4].mapping.name == "differential" and spec.hardware[4].mapping.params.bits == 4
    full = spec.hardware[0]
    assert full.tile.rows == 128 and full.read_noise == "per_vector" and full.mapping.params.bits == 4
    assert spec.hardware_coords["periphery_adc_bits"][:2] == (6.0, 8.0)
    measured = spec.hardware[2].device.params
    assert measured.points.sigma_prog == (0.3, 1.0) and measured.csv == str(tmp_path / "dev.csv")
    from mcstudy.programming.study import build_population

    build_population(spec.hardware[0])  # every section builds into physics


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"device": "pcm", "read_noise": "sometimes"}, "hardware.x.read_noise"),
        ({"device": "pcm", "tile": {"rows": 0}}, "hardware.x.tile.rows"),
        ({"device": "pcm", "mapping": {"kind": "unipolar", "polarity": "sideways"}}, "hardware.x.mapping.polarity"),
        ({"device": "pcm", "periphery": {"adc": {"bits": -1}}}, "hardware.x.periphery.adc.bits"),
        ({"device": {"name": "table", "csv": "missing.csv"}}, "hardware.x.device.csv"),
        ({"device": "pcm", "wiring": "copper"}, "hardware.x.wiring"),
    ],
)
def test_bad_population_sections(tmp_path: Path, entry: dict, field: str) -> None:
    raw = quickstart_raw()
    raw["hardware"] = {"x": entry}
    study = tmp_path / "s.yaml"
    study.write_text(dump(raw))
    with pytest.raises(SpecError) as info:
        load_study(study)
    assert field in dict(info.value.problems), info.value.problems
