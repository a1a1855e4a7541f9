"""Optimised weight programming (Mackin et al.): valid strategies, exact ideal decoding,
the search beats the naive split at every time, saved strategies reproduce, and the
models and study features it needs (LSTM, 1-D LeNet, per-variant models, shared chips)."""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mcstudy import load_study, open_results
from mcstudy.analog import AnalogNetwork
from mcstudy.errors import SpecError
from mcstudy.hardware import DEVICES, MAPPINGS, Population, Variation
from mcstudy.hardware.mapping import Encoding
from mcstudy.hardware.tiles import TileSpec
from mcstudy.models import build_model
from mcstudy.models.zoo import LeNetParams, LSTMParams
from mcstudy.programming import ProgrammingObjective, Strategy, StrategyMapping, naive_vector, optimize_strategy, sample_weights
from mcstudy.programming.study import build_population
from mcstudy.rng import chip_stream

from .conftest import run_cli, small_study

TIMES = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0, 3650 * 86400.0)


def _random_vectors(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        knots = int(rng.integers(2, 9))
        b = np.array(Strategy.bounds(knots))
        out.append((b[:, 0] + (b[:, 1] - b[:, 0]) * rng.random(len(b)), knots))
    return out


def test_every_search_vector_is_a_valid_strategy_that_decodes_exactly() -> None:
    u = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    for x, knots in _random_vectors(500):
        s = Strategy.from_vector(x, knots)
        g = s.conductances(u)
        assert g.shape == (4, u.numel()) and g.min() >= 0 and g.max() <= 1
        torch.testing.assert_close(s.decode(g), u, rtol=0, atol=1e-9)
        # one device of each pair at its minimum wherever the strategy puts it there
        if max(s.g_minus) == 0:
            assert (g[1][u > 0] == 0).all()
    naive = Strategy.naive()
    g = naive.conductances(u)
    torch.testing.assert_close(g[0], u.clamp(min=0))
    assert (g[2:] == 0).all()
    assert Strategy.from_vector(naive_vector(5), 5).conductances(u).sub(g).abs().max() < 1e-12


def test_ideal_devices_programmed_with_a_strategy_read_back_the_target_weights() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 20)
    ideal = DEVICES.get("ideal")
    for x, knots in _random_vectors(20, seed=1):
        s = Strategy.from_vector(x, knots)
        pop = Population(ideal.obj(ideal.params()), StrategyMapping(s), Variation())
        read = pop.program([w], chip_stream(0, "ideal", range(2)), [1]).read(20.0)
        torch.testing.assert_close(read.layers[0].weight, w.expand(2, -1, -1), rtol=1e-5, atol=1e-5)


def test_the_naive_strategy_is_one_differential_pair_without_a_second_pairs_noise() -> None:
    """Mackin et al.'s naive baseline programs each weight on one pair (G⁺, G⁻): its second
    pair is not part of the cell, so PCM's programming noise at G = 0 on g⁺ and g⁻ never
    reaches the weight. Over 64 chips × 240 weights the naive split's weight error has the
    spread of a plain differential pair's (same scale, the same law; tolerance from the
    sample size), not the 5 % more that two more devices at 0 (clamped at G ≥ 0) add here."""
    torch.manual_seed(1)
    w = torch.randn(12, 20, dtype=torch.float64) * 0.05  # small weights: the devices at 0 dominate
    w_max = float(w.abs().max())
    pcm = DEVICES.get("pcm").obj(DEVICES.get("pcm").params(drift_scale=0.0, read_noise_scale=0.0))
    pair = MAPPINGS.get("differential")
    errors = []
    for mapping in (StrategyMapping(Strategy.naive()), pair.obj(pair.params())):
        pop = Population(pcm, mapping, Variation(), weight_scale="layer")
        read = pop.program([w], chip_stream(7, "naive", range(64)), [1]).read(20.0)
        errors.append((read.layers[0].weight - w) / w_max)
    k = errors[0].numel()
    ratio = float(errors[0].std() / errors[1].std())
    assert abs(ratio - 1) < 4 * math.sqrt(1 / k), ratio
    assert Strategy.naive().coefficients()[2:].abs().max() == 0 and Strategy.equal().coefficients()[2:].abs().min() > 0


def _objective(seed: int = 0) -> ProgrammingObjective:
    torch.manual_seed(seed)
    weights = [torch.randn(64, 64) * 0.1, torch.randn(10, 64) * 0.3]
    u = sample_weights(weights, [1, 1], TileSpec(), 2048, seed)
    pcm = DEVICES.get("pcm")
    return ProgrammingObjective(pcm.obj(pcm.params()), Encoding(), u, TIMES, n_knots=4, seed=seed)


def test_objective_is_deterministic_and_the_optimised_strategy_beats_naive_at_every_time() -> None:
    obj = _objective()
    naive = obj.errors(Strategy.naive())
    np.testing.assert_array_equal(naive, obj.errors(Strategy.naive()))  # fixed streams
    assert (np.diff(naive) > 0).all()  # drift makes the error grow with time
    result = optimize_strategy(obj, maxiter=8, popsize=4, seed=0)
    assert result.objective < 0.9 * result.naive_objective
    assert (np.asarray(result.errors) < np.asarray(result.naive_errors)).all(), (result.errors, result.naive_errors)
    np.testing.assert_allclose(obj.errors(result.strategy), result.errors)


def test_a_saved_strategy_loads_and_programs_the_same_conductances(tmp_path: Path) -> None:
    s = Strategy.from_vector(*_random_vectors(1, seed=3)[0])
    s.save(tmp_path / "s.json", objective=0.1)
    back = Strategy.load(tmp_path / "s.json")
    assert back == s
    u = torch.linspace(-1, 1, 101)
    assert torch.equal(back.conductances(u), s.conductances(u))
    pcm = DEVICES.get("pcm")
    w = torch.randn(8, 16)
    chips = [Population(pcm.obj(pcm.params()), StrategyMapping(x), Variation()).program([w], chip_stream(1, "p", range(3)), [1]) for x in (s, back)]
    assert torch.equal(chips[0].programmed(0, "g_prog"), chips[1].programmed(0, "g_prog"))
    (tmp_path / "bad.json").write_text('{"format": "mcstudy.programming-strategy/1", "knots": [0, 1], "g_plus": [0, 2]}')
    with pytest.raises(Exception, match="bad.json"):
        Strategy.load(tmp_path / "bad.json")


def _study(tmp_path: Path, hardware: dict, **changes: object) -> Path:
    return small_study(tmp_path, chips=6, times=["1s", "1d", "1y"], hardware=hardware, **changes)


def test_a_population_can_name_a_strategy_file_and_errors_name_the_field(tmp_path: Path) -> None:
    s = Strategy.from_vector(*_random_vectors(1, seed=4)[0])
    s.save(tmp_path / "mine.json")
    hw = {"pcm": {"device": "pcm", "mapping": {"kind": "multi_pair"}, "programming": {"strategy": "mine.json"}}}
    spec = load_study(_study(tmp_path, hw))
    assert spec.hardware[0].strategy == s
    assert list(spec.hardware[0].canonical()["programming"]["strategy"]["g_plus"]) == list(s.g_plus)
    bad = {"pcm": {"device": "pcm", "mapping": "differential", "programming": "missing.json"}}
    with pytest.raises(SpecError, match=r"hardware.pcm.programming: a programming strategy needs mapping kind 'multi_pair'"):
        load_study(_study(tmp_path, bad))
    bad = {"pcm": {"device": "pcm", "mapping": "multi_pair", "programming": "missing.json"}}
    with pytest.raises(SpecError, match=r"hardware.pcm.programming.strategy: programming strategy file .*missing.json does not exist"):
        load_study(_study(tmp_path, bad))
    bad = {"pcm": {"device": "pcm", "chips_of": "nothing"}}
    with pytest.raises(SpecError, match=r"hardware.pcm.chips_of: must name another hardware population"):
        load_study(_study(tmp_path, bad))


def test_optimised_programming_in_a_study_on_shared_chips(tmp_path: Path, cache_dir: Path) -> None:
    hw = {
        "naive": {"device": "pcm", "mapping": "multi_pair", "programming": "naive"},
        "naive_again": {"device": "pcm", "mapping": "multi_pair", "programming": "naive", "chips_of": "naive"},
        "optimised": {
            "device": "pcm", "mapping": "multi_pair", "chips_of": "naive",
            "programming": {"strategy": "optimize", "knots": 3, "maxiter": 8, "popsize": 4, "samples": 1024},
        },
    }  # fmt: skip
    study = _study(tmp_path, hw, procedures={"compensated": {"kind": "drift_compensation"}})
    r = run_cli("run", study, "--out", tmp_path / "s.zarr", "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "programming for float on optimised" in r.stderr
    ds = open_results(tmp_path / "s.zarr").load()
    acc = ds["accuracy"]
    # chips_of: the same physical chips, programmed the same way, give the same numbers
    np.testing.assert_array_equal(acc.sel(hardware="naive").values, acc.sel(hardware="naive_again").values)
    assert "programming_strategies" in ds.attrs
    # a second run finds the searched strategies in the cache
    r2 = run_cli("run", study, "--out", tmp_path / "t.zarr", "--executor", "serial", cache=cache_dir)
    assert r2.returncode == 0 and "from cache" in r2.stderr
    np.testing.assert_array_equal(open_results(tmp_path / "t.zarr")["accuracy"].values, acc.values)


def test_optimize_programming_command(tmp_path: Path, cache_dir: Path) -> None:
    hw = {"pcm": {"device": "pcm", "mapping": "multi_pair", "programming": {"strategy": "optimize", "knots": 3, "maxiter": 5, "popsize": 4, "samples": 512}}}
    study = _study(tmp_path, hw)
    r = run_cli("optimize-programming", study, "--population", "pcm", "--out", tmp_path / "s.json", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    s = Strategy.load(tmp_path / "s.json")
    assert len(s.knots) == 3 and "naive" in r.stdout and "1 y" in r.stdout
    r = run_cli("optimize-programming", study, "--population", "nope", "--out", tmp_path / "x.json", cache=cache_dir)
    assert r.returncode == 2 and "--population 'nope'" in r.stderr and not (tmp_path / "x.json").exists()


# -- the models the paper's networks need ------------------------------------------------------


@pytest.mark.parametrize("name,params", [("lstm", LSTMParams(hidden=16, step=8)), ("lenet", LeNetParams())])
def test_sequence_models_deploy_exactly_on_nominal_chips(name: str, params: object) -> None:
    torch.manual_seed(0)
    model = build_model(name, params, (1, 40), 10).eval()  # type: ignore[arg-type]
    net = AnalogNetwork(model)
    x = torch.randn(7, 1, 40)
    out = net.forward(x, net.nominal_read(3))
    for c in range(3):
        torch.testing.assert_close(out[c], model(x), rtol=1e-5, atol=1e-5)
    if name == "lstm":
        assert [tuple(w.shape) for w in net.nominal] == [(64, 8), (64, 16), (10, 16)]


def test_variants_may_train_their_own_model(tmp_path: Path) -> None:
    raw = yaml.safe_load(small_study(tmp_path).read_text())
    plain = load_study(small_study(tmp_path))
    raw["variants"]["noise_injection"]["model"] = {"name": "mlp", "hidden": [16]}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_study(path)
    v = spec.variant("noise_injection")
    assert spec.model_of(v).params.hidden == (16,) and spec.model_of(spec.variant("float")).params.hidden == (64, 32)
    assert spec.hash != plain.hash
    assert plain.canonical()["variants"]["float"] == spec.canonical()["variants"]["float"]  # no override: unchanged
    raw["variants"]["noise_injection"]["model"] = {"name": "mlp", "depth": 3}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"variants.noise_injection.model.depth"):
        load_study(path)


def test_the_objective_programs_the_devices_the_chips_deploy_with() -> None:
    """The search sees the deployed physics: an RRAM population's finite off state (its
    G_min) and the network's weights normalised by the deployed weight scale."""
    from mcstudy.programming.study import objective_for
    from mcstudy.spec import parse_study

    raw = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("studies", "quickstart.yaml").read_text())
    raw["hardware"] = {"rram": {"device": "rram", "mapping": "multi_pair", "programming": "optimize"}}
    spec = parse_study(yaml.safe_dump(raw))
    pop = spec.population("rram")
    torch.manual_seed(0)
    net = AnalogNetwork(build_model("mlp", spec.model.params, (1, 8, 8), 10))
    objective = objective_for(net, pop, spec.times)
    deployed = build_population(pop).mapping
    assert objective.encoding.on_off_ratio == deployed.params.on_off_ratio == 10.0
    with_ranges = objective_for(net, pop, spec.times, ranges=[2.0 * float(w.abs().max()) for w in net.nominal])
    assert np.abs(with_ranges.weights).max() <= 0.5 + 1e-6  # normalised by the trainer's (here doubled) ranges


def test_the_equal_split_is_a_named_strategy_that_reads_back_exactly() -> None:
    s = Strategy.equal()
    assert s.problems() == [] and s.significance == 1.0 and s.scale == 1.0
    u = torch.linspace(-1, 1, 41, dtype=torch.float64)
    g = s.conductances(u)
    torch.testing.assert_close(g[0] - g[1], g[2] - g[3])  # both pairs carry the weight equally
    torch.testing.assert_close(s.decode(g), u)
    from mcstudy.spec import parse_study

    raw = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("studies", "quickstart.yaml").read_text())
    raw["hardware"] = {"pcm": {"device": "pcm", "mapping": "multi_pair", "programming": "equal"}}
    pop = build_population(parse_study(yaml.safe_dump(raw)).population("pcm"))
    assert isinstance(pop.mapping, StrategyMapping) and pop.mapping.strategy == Strategy.equal()
