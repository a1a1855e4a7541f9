"""On-chip procedures: self-tuning, in-situ transfer learning, their costs, and tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from mcstudy.analog import AnalogNetwork
from mcstudy.analysis import tolerance, tolerance_gain
from mcstudy.data import DataSpec, load_dataset
from mcstudy.errors import McStudyError
from mcstudy.hardware import DEVICES, MAPPINGS, PeripherySpec, Population, Variation
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams
from mcstudy.procedures import PROCEDURES, EvalData
from mcstudy.procedures.costs import HOROWITZ_PJ, multiply_energy_pj
from mcstudy.procedures.insitu_transfer import InsituTransfer, InsituTransferParams
from mcstudy.procedures.self_tuning import SelfTuning, SelfTuningParams
from mcstudy.rng import chip_stream
from mcstudy.training import TRAINERS, TrainJob, run_train_job

DATA = load_dataset(DataSpec(dataset="digits", calibration_fraction=0.3), seed=0)
MLP = MLPParams(hidden=(32,))


@pytest.fixture(scope="module")
def net() -> AnalogNetwork:
    job = TrainJob("mlp", MLP, "standard", TRAINERS.get("standard").params(epochs=15), 0)
    model = build_model("mlp", MLP, DATA.input_shape, DATA.n_classes)
    model.load_state_dict(run_train_job(job, DATA).state_dict)
    return AnalogNetwork(model)


def _data(test_x: np.ndarray | None = None) -> EvalData:
    t = torch.from_numpy
    x_test = t(DATA.x_test if test_x is None else test_x)
    return EvalData(x_test, t(DATA.y_test), t(DATA.x_cal), t(DATA.y_cal))


def _population(variation: dict | None = None, periphery: dict | None = None) -> Population:
    device, mapping = DEVICES.get("ideal"), MAPPINGS.get("differential")
    return Population(
        device.obj(device.params()), mapping.obj(mapping.params()),
        Variation.model_validate(variation or {}), periphery=PeripherySpec.model_validate(periphery or {}),
    )  # fmt: skip


# -- self-tuning --------------------------------------------------------------------------


@pytest.mark.parametrize("mode,granularity", [("scale", "layer"), ("scale_shift", "channel"), ("scale_shift", "layer")])
def test_self_tuning_cancels_a_pure_per_chip_gain(net: AnalogNetwork, mode: str, granularity: str) -> None:
    # a lognormal between-chip factor of every layer, nothing else: a pure gain per chip layer
    pop = _population({"between": {"sigma": 0.4, "granularity": "layer"}})
    chips = pop.program(net.nominal, chip_stream(1, "gain", range(6)), net.granules)
    read, data = chips.read(20.0), _data()
    proc = SelfTuning(SelfTuningParams(mode=mode, granularity=granularity))
    scales, shifts = proc.trims(proc.prepare(chips, net, data), read, net, data)
    x = data.x_test[:200]
    nominal = net.forward(x, net.nominal_read(1))[0]
    raw = net.forward(x, read)
    tuned = net.forward(x, read, scales, out_shifts=shifts)
    assert (raw - nominal).abs().amax() > 0.05  # the gain matters ...
    torch.testing.assert_close(tuned, nominal.expand_as(tuned), rtol=1e-4, atol=1e-4)  # ... and is gone
    gains = [chips.read(20.0).layers[i].weight[:, 0, 0] / net.nominal[i][0, 0] for i in range(len(net.layers))]
    for a, g in zip(scales, gains):
        torch.testing.assert_close(a.mean(1), 1 / g, rtol=1e-4, atol=1e-5)


def test_self_tuning_leaves_an_ideal_chip_unchanged(net: AnalogNetwork) -> None:
    chips = _population().program(net.nominal, chip_stream(1, "ideal", range(3)), net.granules)
    data = _data()
    proc = SelfTuning(SelfTuningParams())
    state = proc.prepare(chips, net, data)
    scales, shifts = proc.trims(state, chips.read(20.0), net, data)
    for a, b in zip(scales, shifts):
        torch.testing.assert_close(a, torch.ones_like(a), rtol=1e-5, atol=1e-5)
        assert b is not None and b.abs().amax() < 1e-4
    out = proc.evaluate(state, chips, chips.read(20.0), 20.0, net, data)
    torch.testing.assert_close(out["accuracy"], out["accuracy_before"])


# -- in-situ transfer learning --------------------------------------------------------------

DRIFT = {"op_drift": {"gain": 0.3, "offset": 0.8, "granularity": "neuron"}}


def test_insitu_transfer_recovers_a_chip_with_strong_operating_point_drift(net: AnalogNetwork) -> None:
    chips = _population(periphery=DRIFT).program(net.nominal, chip_stream(2, "drift", range(6)), net.granules)
    data = _data()
    proc = InsituTransfer(InsituTransferParams(bits=8))
    out = proc.evaluate(proc.prepare(chips, net, data), chips, chips.read(20.0), 20.0, net, data)
    gain = out["accuracy"] - out["accuracy_before"]
    # measured: 75 % -> 88 % on average (+10 pp) on these chips; every chip must gain
    assert out["accuracy_before"].mean() < 0.9
    assert gain.mean() > 0.05 and (gain > 0).all()


def test_insitu_transfer_state_is_on_its_fixed_point_grid_and_ignores_the_test_split(net: AnalogNetwork) -> None:
    chips = _population(periphery=DRIFT).program(net.nominal, chip_stream(2, "drift", range(3)), net.granules)
    read = chips.read(20.0)
    params = InsituTransferParams(bits=4, epochs=2, headroom=1.0)
    proc = InsituTransfer(params)
    state = proc.prepare(chips, net, _data())
    tuned, scales, shifts = proc.learn(chips, read, 20.0, net, _data(), state)
    # the same learning with a scrambled test split: nothing it learns may change
    garbage = np.random.default_rng(0).normal(size=DATA.x_test.shape).astype(np.float32)
    tuned2, scales2, shifts2 = proc.learn(chips, read, 20.0, net, _data(garbage), state)
    last = len(net.layers) - 1
    assert torch.equal(tuned.layers[last].weight, tuned2.layers[last].weight)
    assert all(torch.equal(a, b) for a, b in zip(scales, scales2) if a is not None)
    assert all(torch.equal(a, b) for a, b in zip(shifts, shifts2) if a is not None)
    # weights on each neuron's 4-bit grid, within its range; gains on theirs
    w0 = net.nominal[last]
    step = w0.abs().amax(1, keepdim=True) / 7
    k = tuned.layers[last].weight / step
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-4)
    assert k.abs().amax() <= 7 + 1e-4
    assert not torch.equal(tuned.layers[last].weight[0], w0)  # it did learn
    for a in scales:
        assert a is not None
        g = (a - 1) / (0.5 / 7)
        torch.testing.assert_close(g, torch.round(g), rtol=0, atol=1e-4)


def test_insitu_transfer_learns_through_what_the_chip_knows(net: AnalogNetwork) -> None:
    """A chip knows its layers' measured outputs and the weights it stored, not its
    multipliers' mismatch or its neurons' drift: one float SGD step on the last layer moves
    its weights by exactly −lr·(softmax(chip logits) − onehot)ᵀ·(measured hidden
    activations) / batch — not by that gradient times each multiplier's unknown gain, as
    back-propagating through the chip's realised weights would."""
    import dataclasses

    from mcstudy.procedures.base import layer_outputs

    pop = _population(periphery={"mismatch": {"gain": 0.3}, "op_drift": {"gain": 0.2, "offset": 0.3, "granularity": "neuron"}})
    chips = pop.program(net.nominal, chip_stream(3, "know", range(2)), net.granules)
    read, data = chips.read(20.0), _data()
    lr, b = 0.1, 32
    proc = InsituTransfer(InsituTransferParams(bits=None, epochs=1, samples=b, batch_size=b, lr=lr, trims="none"))
    tuned, _, _ = proc.learn(chips, read, 20.0, net, data, proc.prepare(chips, net, data))
    last, gain = len(net.layers) - 1, chips.layers[-1].gain
    assert gain is not None
    learned = tuned.layers[last].weight / gain  # the learning stage's weights (they act through the multipliers)
    w0 = net.reference[last]
    start = [*read.layers[:last], dataclasses.replace(read.layers[last], weight=w0 * gain, var=None)]
    x, y = data.x_cal[:b], data.y_cal[:b]
    chip_read = dataclasses.replace(read, layers=start)
    logits = net.forward(x, chip_read)  # (C, b, classes): the chip's own outputs
    hidden = torch.relu(layer_outputs(net, x, chip_read, "check")[0] + net.layers[0].bias)  # measured, as the chip sees them
    error = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(y, logits.shape[-1])) / b
    step = lr * torch.einsum("cbo,cbi->coi", error, hidden)
    torch.testing.assert_close(learned, w0 - step, rtol=1e-4, atol=1e-5)
    # the realised weights' gradient (the step times each multiplier's gain) is far from it
    assert (learned - (w0 - step * gain)).abs().amax() > 20 * 1e-4 * step.abs().amax()


def test_learning_gradients_are_the_chips_knowable_backpropagation_through_every_layer(net: AnalogNetwork) -> None:
    """Every gradient of on-chip learning by hand: with multiplier mismatch, neuron gain and
    offset drift and device variation, the gradients of both layers' known weights, the
    digital scales and shifts are the backpropagation of the chip's own output error
    through the stored weights and the digital trims, with each ReLU passing it where the
    chip's measured output is positive — the chip's unknown gains and offsets nowhere."""
    import dataclasses

    pop = Population(
        DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), MAPPINGS.get("differential").obj(MAPPINGS.get("differential").params()),
        Variation.model_validate({"within": {"sigma": 0.2}}),
        periphery=PeripherySpec.model_validate({"mismatch": {"gain": 0.3}, "op_drift": {"gain": 0.2, "offset": 0.3, "granularity": "neuron"}}),
    )  # fmt: skip
    chips = pop.program(net.nominal, chip_stream(3, "g", range(2)), net.granules)
    read = chips.read(20.0)
    x, y = torch.from_numpy(DATA.x_cal[:16]), torch.from_numpy(DATA.y_cal[:16])
    known = [w.unsqueeze(0).expand(2, *w.shape).clone().requires_grad_(True) for w in net.reference]
    scales = [torch.full((2, w.shape[0]), 1.1).requires_grad_(True) for w in net.reference]
    shifts = [torch.full((2, w.shape[0]), 0.05).requires_grad_(True) for w in net.reference]
    chip = dataclasses.replace(read, layers=[dataclasses.replace(lr, weight=k.detach() * lay.gain, var=None) for lr, k, lay in zip(read.layers, known, chips.layers)])
    with torch.enable_grad():
        logits = net.logits(x, chip, scales, out_shifts=shifts, known=known)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(2), reduction="sum")
        got = torch.autograd.grad(loss, known + scales + shifts)
    with torch.no_grad():  # the chip's forward pass by hand, then what it can compute backwards
        l0, l1 = chip.layers
        b0, b1 = net.layers[0].bias, net.layers[1].bias

        def neurons(z: torch.Tensor, lr, s: torch.Tensor, sh: torch.Tensor, b: torch.Tensor):  # type: ignore[no-untyped-def]
            z = z * lr.neurons.gain.unsqueeze(1) + lr.neurons.offset.unsqueeze(1)
            return z, z * s.unsqueeze(1) + sh.unsqueeze(1) + b

        xf = x.reshape(x.shape[0], -1)
        m0, a0 = neurons(torch.einsum("ni,coi->cno", xf, l0.weight), l0, scales[0].detach(), shifts[0].detach(), b0)
        h = torch.relu(a0)
        m1, a1 = neurons(torch.einsum("cni,coi->cno", h, l1.weight), l1, scales[1].detach(), shifts[1].detach(), b1)
        torch.testing.assert_close(a1, logits.detach(), rtol=1e-5, atol=1e-5)
        d1 = torch.softmax(a1, -1) - torch.nn.functional.one_hot(y, 10)
        dz1 = d1 * scales[1].detach().unsqueeze(1)
        da0 = torch.einsum("cno,coi->cni", dz1, known[1].detach()) * (a0 > 0)
        dz0 = da0 * scales[0].detach().unsqueeze(1)
        want = [torch.einsum("cno,ni->coi", dz0, xf), torch.einsum("cno,cni->coi", dz1, h),
                (da0 * m0).sum(1), (d1 * m1).sum(1), da0.sum(1), d1.sum(1)]  # fmt: skip
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_learning_through_known_weights_leaves_the_forward_pass_bit_for_bit(net: AnalogNetwork) -> None:
    pop = _population(periphery={"mismatch": {"gain": 0.2, "offset": 0.1}})
    read = pop.program(net.nominal, chip_stream(4, "same", range(3)), net.granules).read(20.0)
    x = torch.from_numpy(DATA.x_cal[:40])
    known = [w.unsqueeze(0).clone().requires_grad_(True) for w in net.reference]
    with torch.enable_grad():
        out = net.logits(x, read, known=known)
        out.sum().backward()
    assert torch.equal(out.detach(), net.forward(x, read))
    assert all(k.grad is not None and k.grad.abs().amax() > 0 for k in known)


def _pcm_population(**params: object) -> Population:
    device, mapping = DEVICES.get("pcm"), MAPPINGS.get("differential")
    return Population(device.obj(device.params(**params)), mapping.obj(mapping.params()), Variation())


def test_insitu_transfer_writes_what_it_learned_back_to_pcm_devices(net: AnalogNetwork) -> None:
    """On PCM the learned last layer is written back to its devices at the learning time
    and scored on a read 20 s later: without device noise that read is the learned weights
    as the mapping realises them; with the device's noise it deviates from them as much as
    a first programming deviates from its targets (programming and read noise at 20 s of
    age). On ideal devices (Jia et al.'s processor) it is the learning stage's weights."""
    t = 86400.0
    data = _data()
    proc = InsituTransfer(InsituTransferParams(bits=8, epochs=1, samples=64))
    last = len(net.layers) - 1
    for quiet in (True, False):
        pop = _pcm_population(**({"prog_noise_scale": 0.0, "read_noise_scale": 0.0} if quiet else {}))
        chips = pop.program(net.nominal, chip_stream(5, "write", range(24)), net.granules)
        read = chips.read(t)
        prep = proc.prepare(chips, net, data)
        learned = proc.learn_weights(chips, read, t, net, data, prep)[0][last].value
        scored = proc.learn(chips, read, t, net, data, prep)[0].layers[last].weight
        assert torch.equal(scored, proc.learn(chips, read, t, net, data, prep)[0].layers[last].weight)  # one write, one read
        w_max = float(chips.layers[last].w_max.max())
        if quiet:
            torch.testing.assert_close(scored, learned.clamp(-w_max, w_max), rtol=0, atol=1e-5 * w_max)
        else:
            first = (chips.read(20.0).layers[last].weight - net.nominal[last]).std()
            ratio = float((scored - learned).std() / first)
            assert 0.85 < ratio < 1.18, ratio  # 24 chips × 330 weights: the std of a std is ~1 %; the clip at full scale adds a little
    ideal = _population().program(net.nominal, chip_stream(5, "write", range(3)), net.granules)
    prep = proc.prepare(ideal, net, data)
    read = ideal.read(t)
    learned = proc.learn_weights(ideal, read, t, net, data, prep)[0][last].value
    assert torch.equal(proc.learn(ideal, read, t, net, data, prep)[0].layers[last].weight, learned)


def test_drift_compensation_never_uses_a_reference_read_taken_after_the_read_it_corrects(net: AnalogNetwork) -> None:
    """The reference readout is taken at ``reference_time`` (20 s) after programming: a read
    at 1 s comes before it, so it is scored uncompensated — bit for bit the plain
    inference on the same read — while a read at 1 h is compensated."""
    from mcstudy.procedures.drift_compensation import DriftCompensation, DriftCompensationParams

    chips = _pcm_population().program(net.nominal, chip_stream(6, "early", range(4)), net.granules)
    data = _data()
    proc = DriftCompensation(DriftCompensationParams())
    state = proc.prepare(chips, net, data)
    early = chips.read(1.0)
    assert torch.equal(proc.evaluate(state, chips, early, 1.0, net, data)["loss"], data.score(net, early)["loss"])
    late = chips.read(3600.0)
    assert not torch.equal(proc.evaluate(state, chips, late, 3600.0, net, data)["loss"], data.score(net, late)["loss"])


def test_self_tuning_can_tune_on_a_read_before_the_one_it_is_scored_on(net: AnalogNetwork) -> None:
    """With ``lead``, every-time self-tuning tunes on a read that long before the scored
    read: on ideal devices (nothing changes between reads) the same numbers as tuning on
    the scored read; on PCM (drift and 1/f noise between the two reads) different ones; a
    lead reaching back to programming is refused, naming the field."""
    data = _data()
    for pop, same in ((_population({"between": {"sigma": 0.3, "granularity": "layer"}}), True), (_pcm_population(), False)):
        chips = pop.program(net.nominal, chip_stream(7, "lead", range(3)), net.granules)
        outs = []
        for lead in (0.0, 60.0):
            proc = SelfTuning(SelfTuningParams(lead=lead))
            joint = chips.scheduled([86400.0, *proc.read_times([86400.0])])
            outs.append(proc.evaluate(proc.prepare(joint, net, data), joint, joint.read(86400.0), 86400.0, net, data)["loss"])
        assert torch.equal(outs[0], outs[1]) == same
    with pytest.raises(McStudyError, match="lead"):
        SelfTuning(SelfTuningParams(lead=3600.0)).read_times([20.0, 86400.0])


def test_insitu_write_back_refuses_a_hardware_aware_variant_on_analog_devices(net: AnalogNetwork) -> None:
    """A hardware-aware variant's reference weights are already through its transfer
    function; writing learned weights back through a curve-blind mapping with a nonlinear
    curve would apply the curve again, so in-situ learning refuses that combination on
    devices that are written (not on ideal devices, not on a linear mapping)."""
    import copy

    hwa = copy.copy(net)
    hwa.reference = [w * 0.9 for w in net.reference]  # a reference that is not the programmed weights
    proc = InsituTransfer(InsituTransferParams())
    device, mapping = DEVICES.get("pcm"), MAPPINGS.get("differential")
    curved = Population(device.obj(device.params()), mapping.obj(mapping.params(bits=4, nonlinearity=2.0)), Variation())
    assert proc.population_problems(net, curved) == []
    assert "hardware-aware" in proc.population_problems(hwa, curved)[0]
    assert proc.population_problems(hwa, _pcm_population()) == []  # a linear mapping realises its own levels: no second transfer
    assert proc.population_problems(hwa, _population()) == []


def test_self_tuning_once_runs_untuned_before_its_tuning_read(net: AnalogNetwork) -> None:
    """Trims tuned at ``tune_time`` do not exist before it: a read at 1 s of a chip tuned
    once at 20 s is scored as the untuned chip, bit for bit."""
    chips = _population({"between": {"sigma": 0.3, "granularity": "layer"}}).program(net.nominal, chip_stream(8, "once", range(3)), net.granules)
    data = _data()
    proc = SelfTuning(SelfTuningParams(when="once", tune_time=20.0))
    state = proc.prepare(chips, net, data)
    early, late = chips.read(1.0), chips.read(3600.0)
    assert torch.equal(proc.evaluate(state, chips, early, 1.0, net, data)["loss"], data.score(net, early)["loss"])
    assert not torch.equal(proc.evaluate(state, chips, late, 3600.0, net, data)["loss"], data.score(net, late)["loss"])


@pytest.mark.parametrize("kind", ["self_tuning", "insitu_transfer"])
def test_procedures_on_a_block_equal_the_same_procedures_chip_by_chip(net: AnalogNetwork, kind: str) -> None:
    pop = _population({"within": {"sigma": 0.1}, "between": {"sigma": 0.2}}, {**DRIFT, "mismatch": {"gain": 0.1}, "dac": {"bits": 6}})
    entry = PROCEDURES.get(kind)
    proc = entry.obj(entry.params(epochs=2) if kind == "insitu_transfer" else entry.params())
    data = _data()

    def run(chips_idx: list[int]) -> dict[str, torch.Tensor]:
        chips = pop.program(net.nominal, chip_stream(4, "block", chips_idx), net.granules)
        return proc.evaluate(proc.prepare(chips, net, data), chips, chips.read(3600.0), 3600.0, net, data)

    block = run([0, 1, 2, 3])
    for c in range(4):
        alone = run([c])
        for m, v in block.items():
            assert torch.equal(v[c : c + 1], alone[m]), (m, c)


# -- costs ------------------------------------------------------------------------------------


def test_horowitz_energies() -> None:
    assert multiply_energy_pj(8) == pytest.approx(0.2)
    assert multiply_energy_pj(32) == pytest.approx(3.1)
    assert multiply_energy_pj(None) == HOROWITZ_PJ[("float", 32)] == 3.7
    assert multiply_energy_pj(4) == pytest.approx(0.2 * 0.5 ** (math.log(15.5) / math.log(4)))


def test_learning_costs_match_a_hand_computation() -> None:
    # one analog layer 64 -> 10 (logistic regression on digits), last layer retrained, no trims
    torch.manual_seed(0)
    model = build_model("mlp", MLPParams(hidden=()), DATA.input_shape, DATA.n_classes)
    lone = AnalogNetwork(model)
    chips = _population().program(lone.nominal, chip_stream(0, "cost", range(2)), lone.granules)
    data = _data()
    n, epochs, batch = 100, 3, 32
    proc = InsituTransfer(InsituTransferParams(bits=8, samples=n, epochs=epochs, batch_size=batch))
    out = proc.evaluate(proc.prepare(chips, lone, data), chips, chips.read(20.0), 20.0, lone, data)
    params = 64 * 10 + 10  # weights + offsets
    multiplies = epochs * n * 64 * 10 + epochs * math.ceil(n / batch) * 2 * params  # weight gradients + updates
    state = 2 * params + batch * 64  # values and gradients, one minibatch of inputs
    assert out["learn_memory_bits"][0] == state * 8
    assert out["float_memory_bits"][0] == state * 32
    assert out["learn_energy_pj"][0].item() == pytest.approx(multiplies * 0.2)
    assert out["float_energy_pj"][0].item() == pytest.approx(multiplies * 3.7)
    # self-tuning of the same layer: 10 channels, mean and std over 128 inputs, scale and shift
    st = SelfTuning(SelfTuningParams())
    out = st.evaluate(st.prepare(chips, lone, data), chips, chips.read(20.0), 20.0, lone, data)
    assert out["learn_memory_bits"][0] == (2 * 10 + 20) * 32
    assert out["learn_energy_pj"][0].item() == pytest.approx((128 * 10 + 2 * 20) * 3.7)


# -- tolerance ----------------------------------------------------------------------------------


def _synthetic(values: list[float], slopes: dict[str, float]) -> xr.Dataset:
    """A store-like dataset whose mean accuracy loss is slope × value for each procedure."""
    procs = list(slopes)
    acc = np.zeros((1, len(values) + 1, len(procs), 1, 4), dtype=np.float32)
    for p, s in enumerate(slopes.values()):
        for h, v in enumerate(values):
            acc[0, h, p, 0, :] = 0.9 - s * v
        acc[0, -1, p, 0, :] = 0.9  # another population, not swept
    return xr.Dataset(
        {"accuracy": (("variant", "hardware", "procedure", "time", "chip"), acc), "float_accuracy": ("variant", np.array([0.9], dtype=np.float32))},
        coords={
            "variant": ["v"], "procedure": procs, "time": [20.0], "chip": np.arange(4),
            "hardware": [f"h{i}" for i in range(len(values) + 1)],
            "population": ("hardware", ["sweep"] * len(values) + ["other"]),
            "periphery_mismatch_gain": ("hardware", [*values, 0.0]),
        },
    )  # fmt: skip


def test_tolerance_interpolates_the_threshold_crossing() -> None:
    ds = _synthetic([0.3, 0.1, 0.2, 0.4], {"inference": 0.1, "insitu": 0.04, "robust": 0.001})
    tol = tolerance(ds, "periphery.mismatch.gain", threshold=0.01)
    t = tol["tolerance"].sel(variant="v", population="sweep", time=20.0)
    assert float(t.sel(procedure="inference")) == pytest.approx(0.1, rel=1e-3)  # 0.1 × 0.1 = 0.01 exactly at 0.1
    assert float(t.sel(procedure="insitu")) == pytest.approx(0.25, rel=1e-3)  # between 0.2 and 0.3
    assert float(t.sel(procedure="robust")) == pytest.approx(0.4) and bool(tol["censored"].sel(procedure="robust").item())
    assert float(tolerance_gain(tol, "insitu").sel(population="sweep").item()) == pytest.approx(1.5, rel=1e-3)
    strict = tolerance(ds, "periphery.mismatch.gain", threshold=0.001)
    assert np.isnan(float(strict["tolerance"].sel(procedure="inference").item()))  # over it at the first value
    rel = tolerance(ds, "periphery.mismatch.gain", threshold=0.01 / 0.9, relative=True)
    assert float(rel["tolerance"].sel(procedure="inference").item()) == pytest.approx(0.1, rel=1e-3)


def test_tolerance_has_a_bootstrap_interval_over_chips_paired_between_procedures() -> None:
    """Bootstrap draws of the chips (the same draw at every swept value and procedure): for
    chips whose loss is slope_c × σ with slope_c spread 30 % around 0.1 over 400 chips, the
    replicates' spread of the tolerance t = 0.01 / mean(slope) is the delta method's
    0.01·sd(slope)/(mean(slope)²·√n) (within 15 %: 2,000 replicates); a procedure whose loss
    is 0.4 × inference's on every chip has a gain of exactly +150 % in every replicate."""
    n = 400
    rng = np.random.default_rng(0)
    slope = 0.1 * (1 + 0.3 * rng.standard_normal(n))
    values = np.round(np.arange(0.01, 0.3, 0.01), 2)
    acc = np.zeros((1, len(values), 2, 1, n))
    for h, v in enumerate(values):
        acc[0, h, 0, 0] = 0.9 - slope * v
        acc[0, h, 1, 0] = 0.9 - 0.4 * slope * v
    ds = xr.Dataset(
        {"accuracy": (("variant", "hardware", "procedure", "time", "chip"), acc), "float_accuracy": ("variant", np.array([0.9]))},
        coords={"variant": ["v"], "procedure": ["inference", "insitu"], "time": [20.0], "chip": np.arange(n),
                "hardware": [f"h{i}" for i in range(len(values))], "population": ("hardware", ["sweep"] * len(values)),
                "periphery_mismatch_gain": ("hardware", values)},
    )  # fmt: skip
    boot = tolerance(ds, "periphery.mismatch.gain", resamples=2000, seed=1)["tolerance"].sel(variant="v", population="sweep", time=20.0)
    point = float(tolerance(ds, "periphery.mismatch.gain")["tolerance"].sel(procedure="inference").item())
    spread = float(boot.sel(procedure="inference").std("resample"))
    expected = 0.01 * slope.std() / (slope.mean() ** 2 * math.sqrt(n))
    assert abs(spread / expected - 1) < 0.15, (spread, expected)
    low, high = boot.sel(procedure="inference").quantile([0.025, 0.975], "resample").values
    assert low < point < high
    gain = tolerance_gain(boot, "insitu")
    np.testing.assert_allclose(gain.values, 1.5, rtol=1e-6)


def test_tolerance_names_what_is_wrong() -> None:
    ds = _synthetic([0.1, 0.2], {"inference": 0.1})
    with pytest.raises(McStudyError, match="no swept hardware parameter 'variation.within.sigma'"):
        tolerance(ds, "variation.within.sigma")
    with pytest.raises(McStudyError, match="no procedure 'self_tuning'"):
        tolerance_gain(tolerance(ds, "periphery.mismatch.gain"), "self_tuning")


# -- through the pipeline --------------------------------------------------------------------


def test_on_chip_procedures_in_a_study_same_numbers_everywhere(tmp_path, cache_dir) -> None:  # type: ignore[no-untyped-def]
    from mcstudy import load_study, open_results
    from mcstudy.execution import RunOptions, run_study

    from .conftest import small_study

    hardware = {
        "pcm": {
            "device": "pcm", "mapping": "differential",
            "variation": {"within": {"sigma": 0.05}, "between": {"sigma": 0.2, "granularity": "layer"}},
            "periphery": {"op_drift": {"offset": 0.3, "granularity": "layer"}},
        }
    }  # fmt: skip
    procedures = {
        "inference": {},
        "tuned": {"kind": "self_tuning", "samples": 64},
        "insitu": {"kind": "insitu_transfer", "epochs": 2, "samples": 64},
    }
    spec = load_study(small_study(tmp_path, chips=6, times=["20s", "1d"], hardware=hardware, procedures=procedures))
    assert spec.metrics[:3] == ("accuracy", "loss", "accuracy_before")
    runs = {
        "serial-b6": RunOptions(tmp_path / "a.zarr", executor="serial", block_size=6, cache_dir=cache_dir, progress=False),
        "local2-b4": RunOptions(tmp_path / "b.zarr", executor="local", workers=2, block_size=4, cache_dir=cache_dir, progress=False),
    }
    stores = {}
    for name, opts in runs.items():
        run_study(spec, opts)
        stores[name] = open_results(opts.out).load()
    ref = stores["serial-b6"]
    for m in spec.metrics:
        np.testing.assert_array_equal(stores["local2-b4"][m].values, ref[m].values, err_msg=m)
    # inference records no before/cost figures; the procedures' "before" is inference's own read
    assert np.isnan(ref["accuracy_before"].sel(procedure="inference").values).all()
    for p in ("tuned", "insitu"):
        np.testing.assert_array_equal(ref["accuracy_before"].sel(procedure=p).values, ref["accuracy"].sel(procedure="inference").values)
    # both procedures help on average against between-chip variation and operating-point drift
    mean = ref["accuracy"].mean(("variant", "hardware", "time", "chip"))
    assert float(mean.sel(procedure="tuned")) > float(mean.sel(procedure="inference"))
    assert float(mean.sel(procedure="insitu")) > float(mean.sel(procedure="inference"))
    assert (ref["learn_energy_pj"].sel(procedure="insitu") < ref["float_energy_pj"].sel(procedure="insitu")).all()


def test_a_procedure_that_cannot_run_on_the_network_is_refused_before_anything_is_written(tmp_path, cache_dir) -> None:  # type: ignore[no-untyped-def]
    from .conftest import run_cli, small_study

    study = small_study(tmp_path, chips=4, procedures={"insitu": {"kind": "insitu_transfer", "layers": 7}})
    out = tmp_path / "never.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2, r.stderr
    assert "procedures.insitu: layers is 7 but the network has 3 analog layers" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_self_tuning_once_keeps_the_trims_of_its_tuning_read(net: AnalogNetwork) -> None:
    """``when: once``: a chip tuned at 20 s keeps those trims later, so drift after the
    tuning is not corrected; ``every_time`` re-tunes on each read."""
    device, mapping = DEVICES.get("pcm"), MAPPINGS.get("differential")
    pop = Population(device.obj(device.params()), mapping.obj(mapping.params()), Variation.model_validate({"between": {"sigma": 0.3, "granularity": "layer"}}))
    chips = pop.program(net.nominal, chip_stream(3, "once", range(4)), net.granules)
    data = _data()
    once = SelfTuning(SelfTuningParams(when="once", tune_time=20.0))
    state = once.prepare(chips, net, data)
    assert state.fixed is not None
    tuning_read = chips.read(20.0, tag="self_tuning")
    scales, shifts = once.trims(state, tuning_read, net, data)
    for a, b in zip(scales, state.fixed[0]):
        assert torch.equal(a, b)  # the trims of the 20 s tuning read ...
    year = chips.read(365 * 86400.0)
    later = once.evaluate(state, chips, year, 365 * 86400.0, net, data)
    kept = net.score(data.x_test, data.y_test, year, state.fixed[0], data.batch, state.fixed[1])
    torch.testing.assert_close(later["accuracy"], kept["accuracy"])  # ... applied a year later, unchanged
    every = SelfTuning(SelfTuningParams())
    retuned = every.evaluate(every.prepare(chips, net, data), chips, year, 365 * 86400.0, net, data)
    assert not torch.equal(retuned["accuracy"], later["accuracy"])


def test_insitu_transfer_ablation_of_the_last_layer_and_the_trims(net: AnalogNetwork) -> None:
    """``layers: 0`` trains only the neuron trims; ``trims: none`` only the last layer."""
    chips = _population(periphery=DRIFT).program(net.nominal, chip_stream(2, "drift", range(3)), net.granules)
    read, data = chips.read(20.0), _data()
    only_trims = InsituTransfer(InsituTransferParams(layers=0, trims="all", epochs=2))
    only_layer = InsituTransfer(InsituTransferParams(layers=1, trims="none", epochs=2))
    nothing = InsituTransfer(InsituTransferParams(layers=0, trims="none", epochs=2))
    tuned, scales, shifts = only_trims.learn(chips, read, 20.0, net, data, only_trims.prepare(chips, net, data))
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(tuned.layers, read.layers))  # no weight retrained
    assert all(s is not None for s in scales)
    tuned, scales, shifts = only_layer.learn(chips, read, 20.0, net, data, only_layer.prepare(chips, net, data))
    assert not torch.equal(tuned.layers[-1].weight, read.layers[-1].weight) and all(s is None for s in scales)
    out = nothing.evaluate(nothing.prepare(chips, net, data), chips, read, 20.0, net, data)
    torch.testing.assert_close(out["accuracy"], out["accuracy_before"])  # learns nothing, costs nothing
    assert float(out["learn_energy_pj"].max()) == 0.0
