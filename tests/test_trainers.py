"""The training recipes' defining properties (SCIENCE.md §4)."""

from __future__ import annotations

import pytest
import torch

from mcstudy.analog import AnalogNetwork
from mcstudy.data import DataSpec, load_dataset
from mcstudy.hardware import DEVICES, MAPPINGS, Population, Variation
from mcstudy.hardware.periphery import DACSpec
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams
from mcstudy.rng import chip_stream
from mcstudy.training import TRAINERS, ModelCache, TrainJob, run_train_job, train_or_load
from mcstudy.training.hardware_aware import HardwareAware, HWAParams, soft_levels
from mcstudy.training.quantized import VariabilityAware, VATParams, quantise_weight

DATA = load_dataset(DataSpec(dataset="digits"), seed=0)
MLP = MLPParams(hidden=(32,))
WEIGHTS = ("1.weight", "3.weight")


def _train(trainer: str, **params: object) -> dict[str, torch.Tensor]:
    job = TrainJob("mlp", MLP, trainer, TRAINERS.get(trainer).params(epochs=3, **params), 0)
    return run_train_job(job, DATA).state_dict


@pytest.mark.parametrize("trainer", ["quantization_aware", "post_training_quantized", "variability_aware"])
@pytest.mark.parametrize("bits", [2, 4])
def test_quantised_weights_lie_on_the_grid(trainer: str, bits: int) -> None:
    state = _train(trainer, bits=bits)
    for name in WEIGHTS:
        w = state[name]
        k = w / (w.abs().max() / (2**bits - 1))
        torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-4)
        assert torch.round(k).abs().max() == 2**bits - 1


def test_shared_ranges_use_one_grid_for_all_layers() -> None:
    state = _train("quantization_aware", bits=3, ranges="shared")
    top = max(state[n].abs().max() for n in WEIGHTS)
    step = top / 7
    for name in WEIGHTS:
        k = state[name] / step
        torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-4)


def test_quantised_training_deploys_exactly_on_n_bit_devices() -> None:
    """A QAT network's weights are reproduced exactly by ideal n-bit differential devices."""
    state = _train("quantization_aware", bits=3)
    model = build_model("mlp", MLP, DATA.input_shape, DATA.n_classes)
    model.load_state_dict(state)
    net = AnalogNetwork(model)
    entry = MAPPINGS.get("differential")
    pop = Population(DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), entry.obj(entry.params(bits=3)), Variation())
    read = pop.program(net.nominal, chip_stream(0, "q", [0])).read(1.0)
    for lr, w in zip(read.layers, net.nominal):
        torch.testing.assert_close(lr.weight[0], w, rtol=1e-5, atol=1e-6)


def test_soft_levels_anneal_to_exact_rounding() -> None:
    v = torch.linspace(0, 1, 1001)
    exact = torch.round(v * 7) / 7
    assert (soft_levels(3, 0.0)(v) == exact).all()
    err = [(soft_levels(3, tau)(v) - exact).abs().mean().item() for tau in (0.3, 0.1, 0.03, 0.01)]
    assert err == sorted(err, reverse=True) and err[-1] < 3e-3  # the error shrinks with τ
    x = torch.rand(50, requires_grad=True)
    soft_levels(3, 0.1)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # a smooth surrogate has a gradient


def test_hardware_aware_forward_is_the_exact_transfer_function_at_the_end() -> None:
    enc = dict(bits=3, nonlinearity=3.0, on_off_ratio=10.0, asymmetry=0.2)
    trainer = HardwareAware(HWAParams(**enc))
    assert trainer.tau(0.0) > 0 and trainer.tau(0.69) > 0 and trainer.tau(0.7) == 0.0 and trainer.tau(1.0) == 0.0
    state = _train("hardware_aware", **enc)
    ws = {n: state[n] for n in WEIGHTS}
    forward = trainer.weights(ws, torch.Generator(), progress=1.0)
    # the deployed network on ideal devices with the same encoding sees exactly these weights
    model = build_model("mlp", MLP, DATA.input_shape, DATA.n_classes)
    model.load_state_dict(state)
    net = AnalogNetwork(model)
    entry = MAPPINGS.get("differential")
    pop = Population(DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), entry.obj(entry.params(**enc)), Variation())
    read = pop.program(net.nominal, chip_stream(0, "h", [0])).read(1.0)
    for lr, name in zip(read.layers, WEIGHTS):
        torch.testing.assert_close(lr.weight[0], forward[name], rtol=1e-5, atol=1e-6)
    # and the transfer function is really non-ideal: it differs from plain quantisation
    plain = quantise_weight(ws[WEIGHTS[0]], ws[WEIGHTS[0]].abs().max(), 3)
    assert (forward[WEIGHTS[0]] - plain).abs().max() > 0.05 * plain.abs().max()


def test_variability_aware_samples_fresh_noise_on_quantised_weights() -> None:
    trainer = VariabilityAware(VATParams(bits=3, variation=Variation.model_validate({"within": {"sigma": 0.2}, "between": {"sigma": 0.3}})))
    w = torch.randn(40, 30)
    gen = torch.Generator().manual_seed(0)
    a = trainer.weights({"a": w, "b": w.clone()}, gen, 0.0)
    b = trainer.weights({"a": w, "b": w.clone()}, gen, 0.0)
    assert not torch.equal(a["a"], b["a"])  # fresh every forward pass
    q = quantise_weight(w, w.abs().max(), 3)
    ratio = torch.log(a["a"][q != 0] / q[q != 0])
    assert abs(ratio.std().item() - 0.2) < 0.03  # within-chip spread around the quantised weight
    # the between-chip part (chip granularity) is shared by both layers of one sample
    shared = torch.log(a["a"][q != 0] / q[q != 0]).mean() - torch.log(a["b"][q != 0] / q[q != 0]).mean()
    assert abs(shared.item()) < 0.05


def test_every_trainer_parameter_is_part_of_the_cache_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = ModelCache(tmp_path)
    first = train_or_load("mlp", MLP, "quantization_aware", TRAINERS.get("quantization_aware").params(epochs=1, bits=2), DATA, 0, cache)
    again = train_or_load("mlp", MLP, "quantization_aware", TRAINERS.get("quantization_aware").params(epochs=1, bits=2), DATA, 0, cache)
    other = train_or_load("mlp", MLP, "quantization_aware", TRAINERS.get("quantization_aware").params(epochs=1, bits=3), DATA, 0, cache)
    assert not first.from_cache and again.from_cache and not other.from_cache


def test_activation_quantisation_matches_the_dac() -> None:
    from mcstudy.training.quantized import quantise_activation

    x = torch.rand(5, 64) * 3
    q = quantise_activation(x, DACSpec(bits=3))
    levels = (q / x.abs().amax(1, keepdim=True) * 3).round()
    torch.testing.assert_close(q / x.abs().amax(1, keepdim=True) * 3, levels, rtol=0, atol=1e-5)
    # unsigned: all 2**bits levels over [0, max] (a 2-bit DAC gives 0, 1/3, 2/3, 1)
    u = quantise_activation(torch.tensor([[-0.5, 0.1, 0.4, 0.6, 0.9, 1.0]]), DACSpec(bits=2, signed=False))
    torch.testing.assert_close(u, torch.tensor([[0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]]))


# -- each aware trainer beats standard training on the non-ideality it targets -----------
# Small fixed-seed cases (digits MLP, 20 epochs, paired initial weights); the margins are
# well inside the measured gaps (QAT +18 pp, VAT +21 pp, HWA +8 pp over standard training).

MLP_AWARE = MLPParams(hidden=(64, 32))


def _trained(trainer: str, **params: object) -> dict[str, torch.Tensor]:
    job = TrainJob("mlp", MLP_AWARE, trainer, TRAINERS.get(trainer).params(epochs=20, **params), 0)
    return run_train_job(job, DATA).state_dict


def _mean_accuracy(state: dict[str, torch.Tensor], population: Population, chips: int) -> float:
    model = build_model("mlp", MLP_AWARE, DATA.input_shape, DATA.n_classes)
    model.load_state_dict(state)
    net = AnalogNetwork(model)
    read = population.program(net.nominal, chip_stream(1, "aware", range(chips)), net.granules).read(20.0)
    return net.score(torch.from_numpy(DATA.x_test), torch.from_numpy(DATA.y_test), read)["accuracy"].mean().item()


def _ideal(mapping: dict, variation: dict | None = None, dac_bits: int | None = None) -> Population:
    from mcstudy.hardware import PeripherySpec

    entry = MAPPINGS.get("differential")
    return Population(
        DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), entry.obj(entry.params(**mapping)),
        Variation.model_validate(variation or {}), periphery=PeripherySpec(dac=DACSpec(bits=dac_bits)),
    )  # fmt: skip


@pytest.fixture(scope="module")
def standard_state() -> dict[str, torch.Tensor]:
    return _trained("standard")


def test_quantization_aware_beats_standard_on_2_bit_weights_and_activations(standard_state) -> None:  # type: ignore[no-untyped-def]
    pop = _ideal({"bits": 2}, dac_bits=2)
    gain = _mean_accuracy(_trained("quantization_aware", bits=2, activation_bits=2), pop, 1) - _mean_accuracy(standard_state, pop, 1)
    assert gain > 0.10


def test_variability_aware_beats_standard_under_strong_variation(standard_state) -> None:  # type: ignore[no-untyped-def]
    variation = {"between": {"sigma": 0.5, "granularity": "column"}}
    pop = _ideal({}, variation)
    vat = _trained("variability_aware", bits=8, variation=Variation.model_validate(variation))
    assert _mean_accuracy(vat, pop, 16) - _mean_accuracy(standard_state, pop, 16) > 0.10


def test_hardware_aware_beats_standard_and_plain_qat_on_a_nonlinear_device(standard_state) -> None:  # type: ignore[no-untyped-def]
    encoding = {"bits": 2, "nonlinearity": 5.0, "asymmetry": 0.3}
    pop = _ideal(encoding)
    hwa = _mean_accuracy(_trained("hardware_aware", **encoding), pop, 1)
    assert hwa - _mean_accuracy(standard_state, pop, 1) > 0.05
    assert hwa > _mean_accuracy(_trained("quantization_aware", bits=2), pop, 1)


def test_uniform_unipolar_search_reports_candidates_and_deploys_its_choice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    params = TRAINERS.get("uniform_unipolar").params(
        epochs=4, bits=3, activation_bits=4, activation_signed=False, activation_range=4.0, widths=((16,), (24,)), max_candidates=2
    )
    result = run_train_job(TrainJob("mlp", MLPParams(hidden=(32,)), "uniform_unipolar", params, 0), DATA)
    assert len(result.report) == 4  # 2 widths × 2 polarity patterns
    best = max(result.report, key=lambda r: r["calibration_accuracy"])
    assert result.model_params.hidden == tuple(int(h) for h in best["hidden"].split("-"))
    for row in result.report:  # one device and one ADC column per weight / output: half a differential pair
        hidden = int(row["hidden"])
        assert row["devices"] == 64 * hidden + hidden * 10
        assert row["adcs"] == hidden + 10
    # every matrix has one sign, and all layers share one weight grid
    weights = [result.state_dict[n] for n in ("1.weight", "3.weight")]
    for w, s in zip(weights, best["polarity"]):
        assert (w >= 0).all() if s == "+" else (w <= 0).all()
    step = max(w.abs().max() for w in weights) / 7
    for w in weights:
        torch.testing.assert_close(w / step, torch.round(w / step), rtol=0, atol=1e-4)
    # the chosen architecture survives the cache
    cache = ModelCache(tmp_path)
    from mcstudy.training import load_trained, save_trained

    job = TrainJob("mlp", MLPParams(hidden=(32,)), "uniform_unipolar", params, 0)
    save_trained(result, job, cache)
    again = load_trained(job, DATA, cache)
    assert again is not None and again.model_params == result.model_params and again.report == result.report


def test_uniform_unipolar_blocks_have_one_sign_and_deploy_exactly() -> None:
    params = TRAINERS.get("uniform_unipolar").params(
        epochs=4, warmup_epochs=2, bits=3, activation_bits=4, activation_signed=False, activation_range=4.0, sign="block", block_cols=4,
        ranges="per_layer",  # the crossbar's own range per layer, so deployment is exact
    )
    result = run_train_job(TrainJob("mlp", MLPParams(hidden=(16,)), "uniform_unipolar", params, 0), DATA)
    assert [r["polarity"] for r in result.report] == ["blocks of 4"]
    signs_seen = set()
    for name in WEIGHTS:
        w = result.state_dict[name]
        for b in range(0, w.shape[0], 4):
            block = w[b : b + 4]
            assert (block >= 0).all() or (block <= 0).all(), (name, b)
            signs_seen.add(bool((block >= 0).all()))
    assert signs_seen == {True, False}  # the blocks do not all share one sign
    # deployed on a unipolar crossbar with the same blocks, the chip computes the trained weights
    model = build_model("mlp", MLPParams(hidden=(16,)), DATA.input_shape, DATA.n_classes)
    model.load_state_dict(result.state_dict)
    net = AnalogNetwork(model)
    entry = MAPPINGS.get("unipolar")
    pop = Population(DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), entry.obj(entry.params(bits=3, block_cols=4)), Variation())
    read = pop.program(net.nominal, chip_stream(0, "u", range(1)), net.granules).read(20.0)
    for lr, w in zip(read.layers, net.nominal):
        torch.testing.assert_close(lr.weight[0], w, rtol=1e-5, atol=1e-6)
