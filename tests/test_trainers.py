"""The training recipes' defining properties (README, Trainers)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mcstudy.analog import AnalogNetwork
from mcstudy.data import DataSpec, load_dataset
from mcstudy.data.base import RawData, make_splits
from mcstudy.hardware import DEVICES, MAPPINGS, Population, TileSpec, Variation
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


# digits projected to 784 inputs: a first layer four 256-row tiles tall (the last one 16 rows)
_PROJECTION = np.random.default_rng(0).standard_normal((64, 784)).astype(np.float32) / 8.0
WIDE = make_splits("digits784", RawData(np.concatenate([DATA.x_train, DATA.x_cal, DATA.x_test]).reshape(-1, 64) @ _PROJECTION,
                                         np.concatenate([DATA.y_train, DATA.y_cal, DATA.y_test]), (784,), 10), DataSpec(), 0)  # fmt: skip


def _deployed_mapping(trainer: str, params: dict) -> tuple[str, dict]:
    encoding = {k: params[k] for k in ("bits", "nonlinearity", "on_off_ratio", "asymmetry") if k in params}
    return ("unipolar", {"bits": params["bits"]}) if trainer == "uniform_unipolar" else ("differential", encoding)


@pytest.mark.parametrize(
    "trainer, params",
    [
        ("quantization_aware", dict(bits=2, activation_bits=4, activation_signed=False)),
        ("quantization_aware", dict(bits=3, ranges="shared", activation_bits=4)),
        ("variability_aware", dict(bits=2, activation_bits=4, activation_signed=False)),
        ("hardware_aware", dict(bits=2, activation_bits=3, activation_signed=False, nonlinearity=2.0, on_off_ratio=10.0, asymmetry=0.1)),
        ("uniform_unipolar", dict(bits=2, activation_bits=4, activation_signed=False, activation_range=4.0, max_candidates=1)),
    ],
)
def test_deployed_on_ideal_devices_is_the_trainers_forward_bit_for_bit(trainer: str, params: dict) -> None:
    """What a study deploys is what was trained: a network whose first layer spans four
    256-row tiles, deployed on ideal devices of the trainer's encoding with the trainer's
    weight ranges (the default ``weight_scale``), sees exactly the weights and the DAC of
    the trainer's own final forward pass — per-layer and shared ranges, and García-Redondo's
    uniform scaling on unipolar crossbars. Mapping each tile by its own largest |w| instead
    re-quantises the weights onto another grid."""
    from mcstudy.hardware import PeripherySpec
    from mcstudy.hardware.chip import ChipRead, LayerRead
    from mcstudy.hardware.periphery import NeuronDraws
    from mcstudy.training import analog_weight_names

    arch = MLPParams(hidden=(24,))
    trained = run_train_job(TrainJob("mlp", arch, trainer, TRAINERS.get(trainer).params(epochs=2, **params), 0), WIDE)
    assert trained.ranges is not None
    model = build_model("mlp", trained.model_params or arch, WIDE.input_shape, WIDE.n_classes)
    model.load_state_dict(trained.state_dict)
    rule = TRAINERS.get(trainer).obj(TRAINERS.get(trainer).params(**params))
    names = analog_weight_names(model)
    stored = dict(model.named_parameters())
    forward = rule.quantised({n: stored[n] for n in names}) if trainer != "hardware_aware" else rule.weights({n: stored[n] for n in names}, torch.Generator(), 1.0)
    if params.get("ranges", "shared" if trainer == "uniform_unipolar" else "per_layer") == "shared":
        assert len(set(trained.ranges.values())) == 1  # one range for every layer
    net = AnalogNetwork(model)
    kind, mapping_params = _deployed_mapping(trainer, params)
    entry = MAPPINGS.get(kind)
    ideal = DEVICES.get("ideal")
    periphery = PeripherySpec(dac=rule._dac())
    pop = Population(ideal.obj(ideal.params()), entry.obj(entry.params(**mapping_params)), Variation(), TileSpec(rows=256, cols=256), periphery)
    assert net.nominal[0].shape[1] == 784 and -(-784 // pop.tile.rows) == 4
    read = pop.program(net.nominal, chip_stream(0, "deploy", range(3)), net.granules, net.layer_ranges(trained.ranges)).read(20.0)
    rule.set_reference(net)
    for k, (lr, n) in enumerate(zip(read.layers, names)):
        for c in range(3):
            assert torch.equal(lr.weight[c], forward[n].detach()), n  # bit for bit, every chip
            assert torch.equal(lr.weight[c], net.reference[k]), n  # and the variant's reference is what the chips deploy
    assert net.nominal_read().periphery.dac == periphery.dac
    # the chip's logits are the trainer's forward pass (the same weights, the same DAC)
    x = torch.from_numpy(WIDE.x_test[:200])
    trained_read = ChipRead(
        [LayerRead(forward[n].detach().expand(1, *forward[n].shape), None, lr.w_max, lr.row_slices, NeuronDraws(None, None), None) for lr, n in zip(read.layers, names)],
        periphery,
    )  # fmt: skip
    chip_logits = net.forward(x, read)
    assert torch.equal(chip_logits[0], net.forward(x, trained_read)[0]) and torch.equal(chip_logits[0], chip_logits[2])
    hooks = [m.register_forward_pre_hook(lambda _m, a: (rule.activation(a[0]),)) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        own = torch.func.functional_call(model, {**stored, **{n: forward[n] for n in names}}, (x,))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(chip_logits[0], own, rtol=1e-5, atol=1e-5)  # torch's own Linear sums in another order


# what each trainer's forward pass computes once the noise it samples is off (the chips supply that)
_NOISE_OFF: dict[str, dict] = {
    "standard": {},
    "noise_injection": dict(sigma=0.0),
    "quantization_aware": dict(bits=2, activation_bits=3, activation_signed=False),
    "post_training_quantized": dict(bits=3, activation_bits=3),
    "variability_aware": dict(bits=2, activation_bits=4, variation={"within": {"sigma": 0.0}, "between": {"sigma": 0.0}}),
    "hardware_aware": dict(bits=2, activation_bits=3, activation_signed=False, nonlinearity=2.0, on_off_ratio=10.0, asymmetry=0.1),
    "uniform_unipolar": dict(bits=2, activation_bits=4, activation_signed=False, activation_range=4.0, max_candidates=1),
    "pretrained": {},
}


_NOISE_ON: dict[str, dict] = {
    "noise_injection": dict(sigma=0.3, mode="multiplicative", variation={"within": {"sigma": 0.2}, "between": {"sigma": 0.2}}),
    "variability_aware": dict(variation={"within": {"sigma": 0.3}, "between": {"sigma": 0.2, "granularity": "layer"}}),
}


def test_every_trainer_is_covered_by_the_reference_test() -> None:
    assert sorted(_NOISE_OFF) == sorted(TRAINERS.names())


@pytest.mark.parametrize("name", sorted(_NOISE_OFF))
def test_every_variants_reference_is_what_its_trainer_computes(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A variant is judged against (its float accuracy, self-tuning's targets, in-situ
    learning's start: ``AnalogNetwork.nominal_read``) the network its trainer's own forward
    pass computes at the end of training — the weights through the trainer's transfer
    function and the inputs through its activation quantisation — for every registered
    trainer, as the worker sets it up. Not the stored weights alone: a hardware-aware
    trainer stores the weights its transfer function maps."""
    params = dict(_NOISE_OFF[name])
    if name == "pretrained":
        donor = build_model("mlp", MLP, DATA.input_shape, DATA.n_classes)
        torch.save(donor.state_dict(), tmp_path / "w.pt")
        params["checkpoint"] = str(tmp_path / "w.pt")
    else:
        params["epochs"] = 1
    entry = TRAINERS.get(name)
    trained = run_train_job(TrainJob("mlp", MLP, name, entry.params(**params), 0), DATA)
    model = build_model("mlp", trained.model_params or MLP, DATA.input_shape, DATA.n_classes)
    model.load_state_dict(trained.state_dict)
    net = AnalogNetwork(model)
    rule = entry.obj(entry.params(**params))
    rule.set_reference(net)
    stored = dict(model.named_parameters())
    names = net.weight_names
    forward = rule.weights({n: stored[n] for n in names}, torch.Generator().manual_seed(0), 1.0)
    hooks = [m.register_forward_pre_hook(lambda _m, a: (rule.activation(a[0]),)) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.from_numpy(DATA.x_test[:200])
    with torch.no_grad():
        own = torch.func.functional_call(model.eval(), {**stored, **forward}, (x,))
    for h in hooks:
        h.remove()
    for k, n in enumerate(names):
        assert torch.equal(net.reference[k], forward[n].detach()), n
    torch.testing.assert_close(net.forward(x, net.nominal_read())[0], own, rtol=1e-5, atol=1e-5)  # torch's Linear sums in another order
    if name in _NOISE_ON:  # the trainer with its noise on has the same reference: the noise is the chips' to supply
        noisy = AnalogNetwork(model)
        entry.obj(entry.params(**{**params, **_NOISE_ON[name]})).set_reference(noisy)
        assert all(torch.equal(a, b) for a, b in zip(noisy.reference, net.reference))


def test_a_tile_without_the_layers_largest_weight_keeps_the_trainers_grid() -> None:
    """The issue's example: 2-bit weights on the grid k·w_max/3 of their layer, in a tile
    whose own largest |w| is 2/3·w_max. Scaled by the tile, ±1/3 would deploy as ±4/9; with
    the trainer's range every weight deploys as trained."""
    step = 0.3
    w = torch.zeros(4, 512)
    w[:, :256] = torch.tensor([1.0, -2.0, 3.0, 0.0]).repeat(64) * step  # first tile: the full grid
    w[:, 256:] = torch.tensor([1.0, -1.0, 2.0, 0.0]).repeat(64) * step  # second tile: at most 2/3·w_max
    w_max = float(w.abs().max())
    entry = MAPPINGS.get("differential")
    ideal = DEVICES.get("ideal")
    pop = Population(ideal.obj(ideal.params()), entry.obj(entry.params(bits=2)), Variation(), TileSpec(rows=256))
    q = quantise_weight(w, torch.tensor(w_max), 2)  # what the trainer's forward pass uses
    trained = pop.program([w], chip_stream(0, "grid", [0]), ranges=[w_max]).read(20.0).layers[0].weight[0]
    assert torch.equal(trained, q)
    tiled = dataclasses.replace(pop, weight_scale="tile").program([w], chip_stream(0, "grid", [0])).read(20.0).layers[0].weight[0]
    third = w[:, 256:] == step
    torch.testing.assert_close(tiled[:, 256:][third], torch.full((int(third.sum()),), 4 * w_max / 9))
    assert torch.equal(tiled[:, :256], q[:, :256])


def test_grid_weights_pass_a_unit_gradient_everywhere_also_at_zero() -> None:
    """The differential transfer is linear in w for a linear encoding: its straight-through
    gradient is 1 at every weight, including exact zeros (which uniform/unipolar training
    produces), not 2 where both sides of the pair would pass it."""
    w = torch.tensor([0.0, 0.3, -0.5, 1.0, -1.0, 0.0], requires_grad=True)
    quantise_weight(w, torch.tensor(1.0), 2).sum().backward()
    assert torch.equal(w.grad, torch.ones(6))
    rule = HardwareAware(HWAParams(bits=2, nonlinearity=2.0))
    for tau in (0.3, 0.0):
        x = torch.tensor([[0.0, 1e-7, -1e-7, 0.5]], requires_grad=True)
        rule.mapping().transfer(x, torch.ones(1, 4), soft_levels(2, tau)).sum().backward()
        assert x.grad[0, 0].item() == pytest.approx(x.grad[0, 1].item(), rel=1e-4)  # continuous at zero, not doubled


def test_soft_levels_anneal_to_exact_rounding() -> None:
    v = torch.linspace(0, 1, 1001)
    exact = torch.round(v * 7) / 7
    assert (soft_levels(3, 0.0)(v) == exact).all()
    # away from the decision points (half a level from a level) the surrogate converges to rounding
    y = v.double() * 7
    away = ((y - torch.floor(y)) - 0.5).abs() > 0.05
    err = [(soft_levels(3, tau)(v.double()) - exact.double())[away].abs().max().item() for tau in (0.3, 0.1, 0.03, 0.01)]
    assert err == sorted(err, reverse=True) and err[-1] < 2e-3  # the error shrinks with τ
    x = torch.rand(50, requires_grad=True)
    soft_levels(3, 0.1)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # a smooth surrogate has a gradient


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.5, 0.3, 0.1, 0.03])
def test_soft_levels_are_continuous_and_continuously_differentiable_at_every_level(bits: int, tau: float) -> None:
    """Obradovic et al.'s surrogate is continuously differentiable: no jump in value or
    slope where one level step hands over to the next, for every τ > 0."""
    steps = 2**bits - 1
    q = soft_levels(bits, tau)
    eps = 1e-7  # in level steps
    for k in range(1, steps):
        below = torch.tensor([(k - eps) / steps], dtype=torch.float64, requires_grad=True)
        above = torch.tensor([(k + eps) / steps], dtype=torch.float64, requires_grad=True)
        q_below, q_above = q(below), q(above)
        q_below.backward(), q_above.backward()
        slope = below.grad.item()  # dq/dv, the same scale on both sides
        assert abs(q_above.item() - q_below.item()) <= 4 * eps / steps * slope + 1e-12  # value: no jump
        assert above.grad.item() == pytest.approx(slope, rel=1e-5)  # derivative: no kink
        assert q(torch.tensor([k / steps], dtype=torch.float64)).item() == pytest.approx(k / steps, abs=1e-12)  # exact at levels
    v = torch.linspace(0, 1, 20001, dtype=torch.float64)
    out = q(v)
    assert (out.diff() >= 0).all()  # monotone
    assert out[0].item() == pytest.approx(0.0, abs=1e-12) and out[-1].item() == pytest.approx(1.0, abs=1e-12)


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


def test_noise_injection_can_sample_the_variation_terms_of_variability_aware_training() -> None:
    """The baseline with the same noise: noise injection's ``variation`` multiplies the
    (unquantised) weights by a fresh lognormal draw of VAT's within- and between-chip
    terms: within a layer log(w'/w) spreads with σ_within, and its layer mean moves from
    draw to draw with σ_between (per layer). Tolerances from 400 draws."""
    from mcstudy.training.noise_injection import NoiseInjection, NoiseInjectionParams

    rule = NoiseInjection(NoiseInjectionParams(sigma=0.0, variation={"within": {"sigma": 0.1}, "between": {"sigma": 0.3, "granularity": "layer"}}))
    w = torch.randn(40, 30, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    logs = torch.stack([torch.log(rule.weights({"a": w}, gen, 0.0)["a"] / w) for _ in range(400)])  # (draws, 40, 30)
    assert abs(float(logs.std((1, 2)).mean()) - 0.1) < 0.01
    means = logs.mean((1, 2))
    assert abs(float(means.std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * 400)


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


def test_unipolar_counts_include_the_reference_columns_where_g_min_is_above_0() -> None:
    """A unipolar crossbar on a device with a finite off state (RRAM: G_max/10) carries a
    reference column per column of tiles (one device per input row, no ADC of its own):
    an MLP 64-32-10 on 256×256 tiles has 64 + 32 of them; on ideal devices (G_min = 0) none."""
    from mcstudy.training.uniform_unipolar import UniformUnipolar, UniformUnipolarParams

    model = build_model("mlp", MLPParams(hidden=(32,)), DATA.input_shape, DATA.n_classes)
    for device, extra in (("rram", 64 + 32), ("ideal", 0)):
        rule = UniformUnipolar(UniformUnipolarParams(score_device=device))
        assert rule._counts((model, []), unipolar=True) == (64 * 32 + 32 * 10 + extra, 32 + 10)
        assert rule._counts((model, []), unipolar=False) == (2 * (64 * 32 + 32 * 10), 32 + 10)


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
    # the chosen architecture and the trained ranges survive the cache
    cache = ModelCache(tmp_path)
    from mcstudy.training import load_trained, save_trained

    job = TrainJob("mlp", MLPParams(hidden=(32,)), "uniform_unipolar", params, 0)
    save_trained(result, job, cache)
    again = load_trained(job, DATA, cache)
    assert again is not None and again.model_params == result.model_params and again.report == result.report
    assert again.ranges == result.ranges and len(set(result.ranges.values())) == 1  # uniform scaling: one range
    # a record without the ranges its trainer records (written before they were) is retrained, not trusted
    import dataclasses as dc

    save_trained(dc.replace(result, ranges=None), job, cache)
    assert load_trained(job, DATA, cache) is None


@pytest.mark.parametrize("sign", ["layer", "none"])
def test_uniform_unipolar_scores_candidates_as_they_deploy(sign: str) -> None:
    """A candidate's calibration accuracy is the accuracy of exactly the chip it deploys as:
    the trainer's shared weight range as the conductance scale and the DAC it trained with
    (unsigned here); and a differential output counts ``differential_adcs`` ADCs."""
    from mcstudy.hardware import PeripherySpec

    common = dict(epochs=3, bits=2, activation_bits=3, activation_signed=False, activation_range=4.0, max_candidates=1, score_chips=2)
    params = TRAINERS.get("uniform_unipolar").params(sign=sign, **common)
    result = run_train_job(TrainJob("mlp", MLPParams(hidden=(16,)), "uniform_unipolar", params, 0), DATA)
    rule = TRAINERS.get("uniform_unipolar").obj(params)
    assert rule._population(unipolar=sign != "none").periphery.dac == DACSpec(bits=3, range=4.0, mode="fixed", signed=False)
    model = build_model("mlp", MLPParams(hidden=(16,)), DATA.input_shape, DATA.n_classes)
    model.load_state_dict(result.state_dict)
    net = AnalogNetwork(model)
    entry = MAPPINGS.get("unipolar" if sign != "none" else "differential")
    ideal = DEVICES.get("ideal")
    deployed = Population(
        ideal.obj(ideal.params()), entry.obj(entry.params(bits=2)), Variation(),
        periphery=PeripherySpec(dac=DACSpec(bits=3, range=4.0, mode="fixed", signed=False)),
    )  # fmt: skip
    chips = deployed.program(net.nominal, chip_stream(0, "uniform_unipolar.score", range(2)), net.granules, net.layer_ranges(result.ranges))
    accuracy = net.score(torch.from_numpy(DATA.x_cal), torch.from_numpy(DATA.y_cal), chips.read(20.0))["accuracy"].mean().item()
    assert result.report[0]["calibration_accuracy"] == accuracy
    outputs = 16 + 10
    assert result.report[0]["adcs"] == outputs  # one per column, or per differential pair subtracted in analog
    if sign == "none":
        two = TRAINERS.get("uniform_unipolar").params(sign=sign, differential_adcs=2, **common)
        again = run_train_job(TrainJob("mlp", MLPParams(hidden=(16,)), "uniform_unipolar", two, 0), DATA)
        assert again.report[0]["adcs"] == 2 * outputs and again.report[0]["devices"] == result.report[0]["devices"]


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
