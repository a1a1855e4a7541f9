"""The physics library: mappings, tiles, periphery, device models and read-noise modes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mcstudy.analog import AnalogNetwork
from mcstudy.hardware import DEVICES, MAPPINGS, PeripherySpec, Population, TileGrid, TileSpec, Variation
from mcstudy.hardware.ideal import IdealDevice, IdealParams
from mcstudy.hardware.layout import from_flat
from mcstudy.hardware.periphery import ADCSpec, DACSpec, MismatchSpec, OpDriftSpec, quantise_symmetric
from mcstudy.hardware.rram import RRAMDevice, RRAMParams
from mcstudy.hardware.sram import SRAMDevice, SRAMParams
from mcstudy.hardware.table import TableDevice, TableParams, TablePoints, interp
from mcstudy.hardware.variation import BetweenChip, WithinChip
from mcstudy.models import build_model
from mcstudy.models.zoo import LeNetParams, MLPParams
from mcstudy.rng import chip_stream

def _weights(out: int = 20, n_in: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _ideal(mapping: str, tile: TileSpec | None = None, **params: object) -> Population:
    entry = MAPPINGS.get(mapping)
    return Population(IdealDevice(IdealParams()), entry.obj(entry.params(**params)), Variation(), tile or TileSpec())


def _roundtrip(pop: Population, w: torch.Tensor) -> torch.Tensor:
    chips = pop.program([w], chip_stream(0, "rt", [0]))
    return chips.read(3600.0).layers[0].weight[0]


@pytest.mark.parametrize("mapping", ["differential", "multi_pair", "unipolar"])
@pytest.mark.parametrize("bits", [None, 2, 4, 8])
def test_ideal_devices_reproduce_weights_within_a_quantisation_step(mapping: str, bits: int | None) -> None:
    w = _weights()
    if mapping == "unipolar":
        w = w.abs()
    got = _roundtrip(_ideal(mapping, bits=bits, on_off_ratio=10.0), w)
    w_max = w.abs().max()
    if bits is None:
        torch.testing.assert_close(got, w, rtol=1e-12, atol=1e-12)
        return
    step = w_max / (2**bits - 1)  # one level of a device; multi-pair is finer
    if mapping == "multi_pair":
        step = step * 3 / 2  # (F + 1) / F with F = 2, then the LSP refines it
    err = (got - w).abs().max()
    assert err <= step / 2 + 1e-12
    if mapping == "multi_pair":  # the second pair improves on a single pair of the same precision
        single = _roundtrip(_ideal("differential", bits=bits), w)
        assert err < (single - w).abs().max()


def test_unipolar_has_one_device_and_one_sign_per_block() -> None:
    w = _weights(12, 10)
    pop = _ideal("unipolar", block_cols=4)
    chips = pop.program([w], chip_stream(0, "u", [0]))
    assert chips.programmed(0, "g").shape == (1, 1, 12, 10)  # one device per weight
    got = chips.read(1.0).layers[0].weight[0]
    for b in range(3):
        block = got[4 * b : 4 * b + 4]
        assert (block >= 0).all() or (block <= 0).all()
    # the clipped weights are the ones of the other sign; the kept ones are exact
    signs = torch.sign(got.sum(1, keepdim=True))
    kept = torch.sign(w) == signs
    torch.testing.assert_close(got[kept], w[kept])
    assert (got[~kept] == 0).all()


def test_on_off_ratio_sets_the_smallest_conductance() -> None:
    for mapping in ("differential", "multi_pair", "unipolar"):
        pop = _ideal(mapping, on_off_ratio=20.0)
        g_max = pop.device.g_max
        g = pop.program([_weights()], chip_stream(0, "r", [0])).programmed(0, "g")
        assert g.min().item() == pytest.approx(g_max / 20.0)
        assert g.max().item() <= g_max + 1e-9


def test_nonlinearity_and_asymmetry_distort_the_decoded_weights() -> None:
    w = _weights()
    exact = _roundtrip(_ideal("differential", bits=4), w)
    bent = _roundtrip(_ideal("differential", bits=4, nonlinearity=3.0), w)
    # a concave level curve: small weights come out too large, the largest stays
    pos = (w > 0) & (w < w.max() / 2)
    assert (bent[pos].abs() >= exact[pos].abs()).all() and (bent[pos] != exact[pos]).any()
    lop = _roundtrip(_ideal("differential", asymmetry=0.2), w)
    neg = w < 0  # the negative side responds 1.2 times as strongly as the positive side
    torch.testing.assert_close(lop[neg], w[neg])
    torch.testing.assert_close(lop[~neg], w[~neg] / 1.2)


@pytest.mark.parametrize("mapping", ["differential", "multi_pair", "unipolar"])
@pytest.mark.parametrize("asymmetry", [-0.5, 0.3, 0.9])
def test_asymmetry_never_programs_outside_the_conductance_range(mapping: str, asymmetry: float) -> None:
    """The side with the larger scale spans [G_min, G_max]; the other shrinks to fit, and the
    negative side's scale is (1 + asymmetry) times the positive side's."""
    w = _weights(15, 40)
    w = torch.cat([w, -w])  # the largest |w| on both sides
    pop = _ideal(mapping, asymmetry=asymmetry, on_off_ratio=10.0)
    g_max = pop.device.g_max
    g = pop.program([w], chip_stream(0, "asym", [0])).programmed(0, "g")
    assert g.min().item() >= g_max / 10.0 - 1e-12 and g.max().item() <= g_max + 1e-12
    if mapping == "unipolar":  # no negative-side devices: asymmetry changes nothing
        plain = _ideal(mapping, on_off_ratio=10.0).program([w], chip_stream(0, "asym", [0])).programmed(0, "g")
        assert torch.equal(g, plain)
    else:
        assert g.max().item() == pytest.approx(g_max)  # the full range is used
    if mapping == "differential":
        got = _roundtrip(pop, w)
        pos_gain = (got[w > 0] / w[w > 0]).mean().item()
        neg_gain = (got[w < 0] / w[w < 0]).mean().item()
        assert neg_gain / pos_gain == pytest.approx(1 + asymmetry, rel=1e-9)
        assert max(pos_gain, neg_gain) == pytest.approx(1.0, rel=1e-9)


def test_tiles_have_their_own_scale_and_agree_with_untiled_ideal_layers() -> None:
    w = _weights(40, 70)
    w[:, :35] *= 0.1  # the first row tile has small weights: it gets a finer scale
    grid = TileGrid.build(40, 70, TileSpec(rows=35, cols=16))
    assert (grid.n_row_tiles, grid.n_col_tiles, grid.n_tiles) == (2, 3, 6)
    maxima = grid.tile_abs_max(w)
    assert maxima[0] < 0.2 * maxima[3]
    tiled = _roundtrip(_ideal("differential", tile=TileSpec(rows=35, cols=16)), w)
    untiled = _roundtrip(_ideal("differential"), w)
    torch.testing.assert_close(tiled, untiled, rtol=1e-12, atol=0)
    # with quantisation, the finer scale of the small tile gives smaller errors there
    t4 = _roundtrip(_ideal("differential", bits=4, tile=TileSpec(rows=35, cols=16)), w)
    u4 = _roundtrip(_ideal("differential", bits=4), w)
    assert (t4 - w)[:, :35].abs().max() < (u4 - w)[:, :35].abs().max()


def test_tile_and_column_granularity() -> None:
    grid = TileGrid.build(8, 12, TileSpec(rows=4, cols=4))
    stream = chip_stream(1, "g", range(50))
    v = Variation(between=BetweenChip(sigma=0.3, granularity="tile"))
    pop = Population(IdealDevice(IdealParams()), MAPPINGS.get("differential").obj(MAPPINGS.get("differential").params()), v, TileSpec(rows=4, cols=4))
    w = torch.ones(8, 12, dtype=torch.float64)
    g = pop.program([w], stream).programmed(0, "g")[:, 0]  # (C, out, in), positive devices
    idx = grid.tile_index()
    for t in range(grid.n_tiles):
        vals = g[:, idx == t]
        assert torch.equal(vals.amin(1), vals.amax(1))  # one draw per tile
    per_tile = torch.stack([g[:, idx == t][:, 0] for t in range(grid.n_tiles)], 1)
    assert per_tile[0].unique().numel() == grid.n_tiles
    col = Variation(within=WithinChip(sigma=0.3, granularity="column"))
    pop_c = Population(pop.device, pop.mapping, col, TileSpec(rows=4, cols=4))
    gc = pop_c.program([w], stream).programmed(0, "g")[:, 0]
    rt = grid.row_tile_of_input()
    for r in range(grid.n_row_tiles):
        block = gc[:, :, rt == r]
        assert torch.equal(block.amin(2), block.amax(2))  # one draw per physical column


def test_quantiser_levels() -> None:
    x = torch.linspace(-2, 2, 1001, dtype=torch.float64)
    q = quantise_symmetric(x, 1.0, 3)
    np.testing.assert_allclose(np.unique(q.numpy()), np.arange(-3, 4) / 3, atol=1e-12)


def _mlp_net() -> AnalogNetwork:
    torch.manual_seed(0)
    return AnalogNetwork(build_model("mlp", MLPParams(hidden=(32,)), (1, 8, 8), 10).double())


def test_adc_and_dac_quantise_outputs_and_inputs() -> None:
    net = _mlp_net()
    x = torch.rand(50, 1, 8, 8, dtype=torch.float64)
    ideal = _ideal("differential")
    exact = net.forward(x, ideal.program(net.nominal, chip_stream(0, "a", [0])).read(1.0))
    for periphery in (PeripherySpec(adc=ADCSpec(bits=6, range=8.0)), PeripherySpec(dac=DACSpec(bits=4))):
        pop = Population(ideal.device, ideal.mapping, Variation(), TileSpec(), periphery)
        out = net.forward(x, pop.program(net.nominal, chip_stream(0, "a", [0])).read(1.0))
        err = (out - exact).abs()
        assert 0 < err.max() < 0.5 * exact.abs().max()
    # 16-bit converters are transparent to within their resolution
    fine = Population(ideal.device, ideal.mapping, Variation(), TileSpec(), PeripherySpec(dac=DACSpec(bits=16), adc=ADCSpec(bits=16, range=32.0)))
    torch.testing.assert_close(net.forward(x, fine.program(net.nominal, chip_stream(0, "a", [0])).read(1.0)), exact, rtol=0, atol=2e-3)


def test_a_per_vector_dac_scales_a_convolution_by_its_whole_image() -> None:
    """``dac.mode: per_vector`` gives a Linear each input vector its own range and a
    convolution each input image one range for all its patches (as documented, and as a
    trainer's activation quantisation computes it): the chip's output is the exact
    convolution of the image quantised over its own largest |x|."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten()).double()
    net = AnalogNetwork(conv)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    x[:, :, :4] *= 0.05  # patches of the top half are far below the image's largest |x|
    dac = DACSpec(bits=3)
    pop = Population(IdealDevice(IdealParams()), MAPPINGS.get("differential").obj(MAPPINGS.get("differential").params()), Variation(),
                     TileSpec(), PeripherySpec(dac=dac))  # fmt: skip
    chip = net.forward(x, pop.program(net.nominal, chip_stream(0, "dac", [0])).read(1.0))[0]
    from mcstudy.training.quantized import quantise_activation

    with torch.no_grad():
        own = conv(quantise_activation(x, dac))
    torch.testing.assert_close(chip, own, rtol=1e-9, atol=1e-9)


def test_operating_point_drift_and_mismatch() -> None:
    net = _mlp_net()
    ideal = _ideal("differential")
    chips = 400
    spec = PeripherySpec(op_drift=OpDriftSpec(gain=0.1, offset=0.05, granularity="chip"), mismatch=MismatchSpec(gain=0.02))
    pop = Population(ideal.device, ideal.mapping, Variation(), TileSpec(), spec)
    batch = pop.program(net.nominal, chip_stream(0, "op", range(chips)))
    gains = [layer.neurons.gain for layer in batch.layers]
    assert all(torch.equal(gains[0], g) for g in gains)  # chip granularity: one gain for every layer
    assert abs(gains[0].std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * chips)
    torch.testing.assert_close(batch.draws()["op_gain_z"], (gains[0][:, 0] - 1) / 0.1, rtol=0, atol=1e-5)
    read = batch.read(1.0)
    rel = read.layers[0].weight / net.nominal[0] - 1
    assert abs(rel.std().item() - 0.02) < 0.001
    neuron = Population(ideal.device, ideal.mapping, Variation(), TileSpec(), PeripherySpec(op_drift=OpDriftSpec(gain=0.1, granularity="neuron")))
    g = neuron.program(net.nominal, chip_stream(0, "op", range(3))).layers[1].neurons.gain
    assert g.shape == (3, 10) and g.unique().numel() == 30


@pytest.mark.parametrize("interval", [1e-6, 1e-3])
def test_per_vector_read_noise_splits_the_1_over_f_variance(interval: float) -> None:
    """1/f noise under ``read_noise: per_vector`` (Nandakumar et al. 2019): each product's deviation
    from the programmed weights has the per-read variance D(t) = (G_D·Q_s)²·ln((t + t_r)/(2t_r));
    two products Δ = vector_interval apart differ by D(Δ); so a part D(t) − D(Δ)/2 is common
    to the products of one read and a part D(Δ)/2 is fresh for each, in output space
    Σ_j σ_ij² x_j². Checked against the equations, within one read and over many reads."""
    from mcstudy.hardware.pcm import PCMParams, vector_fresh_fraction

    t = 86400.0
    p = PCMParams(vector_interval=interval, prog_noise_scale=0.0, drift_scale=0.0)  # every chip programmed alike: chips differ by read noise alone
    fresh = 0.5 * math.log((interval + p.t_read) / (2 * p.t_read)) / math.log((t + p.t_read) / (2 * p.t_read))
    assert vector_fresh_fraction(t, p) == pytest.approx(fresh, rel=1e-12)
    assert 0 < fresh < 0.3  # products microseconds to milliseconds apart share most of the noise
    lin = torch.nn.Linear(16, 4, bias=False).double()
    with torch.no_grad():  # |w| in [0.5, 1]·max: Q_s·√ln stays small, so the clamp at 0 S never acts
        lin.weight.copy_(torch.sign(torch.randn(4, 16)) * (0.5 + 0.5 * torch.rand(4, 16)))
    net = AnalogNetwork(torch.nn.Sequential(lin))
    pop = Population.build("pcm", p, "differential", MAPPINGS.get("differential").params(), Variation(), read_noise="per_vector")
    chips = pop.program(net.nominal, chip_stream(2, "v", [0]))
    layer = chips.layers[0]
    _, sigma = pop.device.mean_and_sigma(layer.state, t)
    full = pop.mapping.decode_variance(from_flat(sigma, layer.shape), layer.coeff, layer.w_max, pop.device.g_max)[0]
    read = chips.read(t)
    torch.testing.assert_close(read.layers[0].var[0], fresh * full, rtol=1e-12, atol=0)  # the fresh part, per weight
    x = torch.rand(1, 16, dtype=torch.float64)
    total = ((x**2) @ full.T)[0]  # D(t) in output space
    # within one read: around the read's common part, fresh noise of variance D(Δ)/2 per product
    n = 20_000
    y = net.forward(x.expand(n, 16), read)[0]
    torch.testing.assert_close(y.mean(0), (x @ read.layers[0].weight[0].T)[0], rtol=0, atol=float(5 * (fresh * total).sqrt().max() / math.sqrt(n)))
    assert ((y.var(0) / (fresh * total)) - 1).abs().max() < 5 * math.sqrt(2 / n)
    # over many reads (one each of many chips programmed alike): one product's total variance is
    # the per-read law, and two products of one read differ by D(Δ)
    reads = 3000
    many = pop.program(net.nominal, chip_stream(2, "v", range(reads)))
    ys = net.forward(x.expand(2, 16), many.read(t))
    assert ((ys[:, 0].var(0) / total) - 1).abs().max() < 5 * math.sqrt(2 / reads)
    assert (((ys[:, 0] - ys[:, 1]).var(0) / (2 * fresh * total)) - 1).abs().max() < 5 * math.sqrt(2 / reads)
    # and the per-read mode of the same chips has the same total variance
    per_read = dataclasses.replace(pop, read_noise="per_read")
    again = per_read.program(net.nominal, chip_stream(2, "v", range(reads)))
    draws = x @ again.read(t).layers[0].weight.transpose(1, 2)
    assert ((draws[:, 0].var(0) / total) - 1).abs().max() < 5 * math.sqrt(2 / reads)


def test_per_vector_noise_is_fresh_for_every_call_of_a_layer() -> None:
    """An LSTM applies its gate matrices once per time step: each step's products get their
    own per-vector noise (and output noise), not the first step's again."""
    from mcstudy.models.zoo import LSTMParams

    torch.manual_seed(0)
    model = build_model("lstm", LSTMParams(hidden=8, step=4), (16,), 3).eval()
    net = AnalogNetwork(model)
    for cfg in (dict(read_noise="per_vector"), dict(periphery=PeripherySpec(output_noise=0.05))):
        pop = Population.build("pcm", DEVICES.get("pcm").params(), "differential", MAPPINGS.get("differential").params(), Variation(), **cfg)
        read = pop.program(net.nominal, chip_stream(1, "lstm", [0]), net.granules).read(3600.0)
        outs: list[torch.Tensor] = []
        handle = net.layers[0].register_forward_hook(lambda _m, _a, out, seen=outs: seen.append(out.clone()))
        x = torch.ones(5, 16)  # every time step feeds the input-to-gates matrix the same vectors
        net.forward(x, read)
        net.forward(x, read)
        handle.remove()
        first, second = outs[:4], outs[4:]
        assert len(first) == len(second) == 4  # four time steps
        assert all(not torch.equal(first[0], first[k]) for k in range(1, 4))  # fresh noise at every step
        assert all(torch.equal(a, b) for a, b in zip(first, second))  # keyed, not stateful: the same call sees the same noise


def test_rram_statistics() -> None:
    p = RRAMParams()
    dev = RRAMDevice(p)
    n = 400_000
    target = torch.full((1, n), 0.5 * p.g_max, dtype=torch.float64)
    state = dev.program(target, chip_stream(0, "rram", [0]))
    log_ratio = torch.log(state["g_prog"] / target)
    sigma = p.sigma_on + (p.sigma_off - p.sigma_on) * 0.5 / 0.9  # halfway from on (g = 1) to off (g = 0.1)
    assert abs(log_ratio.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    g, s = dev.mean_and_sigma(state, 20.0 * 1e4)  # four decades after t0
    expected = state["g_prog"] * (1 - state["rate"] * 4)
    torch.testing.assert_close(g, expected.clamp(min=0))
    assert abs((g / state["g_prog"]).mean().item() - (1 - 4 * p.relax_mean)) < 5 * 4 * p.relax_sigma / math.sqrt(n)
    torch.testing.assert_close(s, g * p.read_noise)


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("g", [None, 0.3, 1.0])  # None: the off state
def test_rram_lognormal_programming_moments(g: float | None, corrected: bool) -> None:
    """G_P = G_T·exp(σ_P·z [− σ_P²/2]): the log-conductance has spread σ_P(g) (σ_off at the off
    state, σ_on at G_max); uncorrected, the median is the target and the mean is
    G_T·exp(σ_P²/2); corrected, the mean is the target."""
    p = RRAMParams(mean_corrected=corrected)
    n = 400_000
    level = 1.0 / p.on_off_ratio if g is None else g
    target = torch.full((1, n), level * p.g_max, dtype=torch.float64)
    sigma = {None: p.sigma_off, 1.0: p.sigma_on}.get(g, p.sigma_on + (p.sigma_off - p.sigma_on) * (1 - level) / (1 - 1 / p.on_off_ratio))
    ratio = RRAMDevice(p).program(target, chip_stream(4, "rram-moments", [0]))["g_prog"] / target
    log_ratio = torch.log(ratio)
    assert abs(log_ratio.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    shift = -0.5 * sigma**2 if corrected else 0.0
    assert abs(log_ratio.mean().item() - shift) < 5 * sigma / math.sqrt(n)
    mean = math.exp(shift + 0.5 * sigma**2)  # 1 when corrected, exp(σ²/2) otherwise
    sd = mean * math.sqrt(math.exp(sigma**2) - 1)
    assert abs(ratio.mean().item() - mean) < 5 * sd / math.sqrt(n)


def test_rram_off_state_is_finite_and_spread() -> None:
    """A default RRAM population puts "zero" devices at G_off = G_max/10 with their own
    lognormal spread, so a zero weight reads as noise around zero, not as an exact 0."""
    dev = RRAMDevice(RRAMParams(read_noise=0.0, relax_mean=0.0, relax_sigma=0.0))
    entry = MAPPINGS.get("differential")
    pop = Population(dev, entry.obj(entry.params()), Variation())
    assert pop.mapping.g_min(dev.g_max) == pytest.approx(dev.g_max / 10)
    w = torch.zeros(200, 100)
    w[0, 0] = 1.0  # sets the scale
    chips = pop.program([w], chip_stream(0, "rram-off", [0]))
    g = chips.programmed(0, "g_prog")[0]
    off = g[:, 1:, :].flatten()  # both devices of every zero weight
    assert (off > 0).all()
    assert abs(torch.log(off / (dev.g_max / 10)).std().item() - 0.25) < 5 * 0.25 / math.sqrt(2 * off.numel())
    zero = chips.read(20.0).layers[0].weight[0, 1:]
    expected = math.sqrt(2) * 0.1 * math.sqrt(math.exp(0.25**2) - 1) * math.exp(0.25**2 / 2) / 0.9  # G_off spread / (G_max − G_off)
    assert abs(zero.mean().item()) < 5 * expected / math.sqrt(zero.numel())
    assert abs(zero.std().item() - expected) < 5 * expected / math.sqrt(2 * zero.numel())
    # a mapping with its own (smaller) on/off ratio keeps it; None on the device is the ideal 0 S off state
    own = Population(dev, entry.obj(entry.params(on_off_ratio=5.0)), Variation())
    assert own.mapping.g_min(dev.g_max) == pytest.approx(dev.g_max / 5)
    ideal_off = Population(RRAMDevice(RRAMParams(on_off_ratio=None)), entry.obj(entry.params()), Variation())
    assert ideal_off.mapping.g_min(dev.g_max) == 0.0
    with pytest.raises(ValueError, match="below the device's off state"):  # a mapping cannot target below it
        Population(dev, entry.obj(entry.params(on_off_ratio=100.0)), Variation())


def test_sram_mismatch_follows_pelgrom() -> None:
    n = 400_000
    target = torch.full((1, n), 0.7, dtype=torch.float64)
    for area in (1.0, 4.0):
        dev = SRAMDevice(SRAMParams(mismatch=0.02, area=area))
        g = dev.read(dev.program(target, chip_stream(0, "sram", [0])), 1e9, chip_stream(0, "x", [0]))
        sigma = 0.02 / math.sqrt(area)
        assert abs((g / 0.7 - 1).std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)


def test_table_device_interpolates_measured_points(tmp_path: Path) -> None:
    pts = TablePoints(g=(0.0, 0.5, 1.0), sigma_prog=(0.2, 1.0, 0.6), mu_nu=(0.1, 0.06, 0.05), sigma_nu=(0.04, 0.02, 0.01))
    g = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(interp(g, pts.g, pts.sigma_prog), torch.tensor([0.2, 0.6, 1.0, 0.8, 0.6, 0.6], dtype=torch.float64))
    csv = tmp_path / "pcm.csv"
    csv.write_text("g,sigma_prog,mu_nu,sigma_nu\n0,0.2,0.1,0.04\n0.5,1.0,0.06,0.02\n1,0.6,0.05,0.01\n")
    params = TableParams(csv="pcm.csv").resolve(tmp_path)
    assert params.points == pts
    dev = TableDevice(params)
    n = 400_000
    state = dev.program(torch.full((1, n), 0.25 * 25.0, dtype=torch.float64), chip_stream(0, "tab", [0]))
    assert abs(state["g_prog"].std().item() - 0.6) < 5 * 0.6 / math.sqrt(2 * n)
    mu, sd = 0.08, 0.03  # interpolated at g = 0.25; |N(0.08, 0.03)| is barely folded
    assert abs(state["nu"].mean().item() - mu) < 5 * sd / math.sqrt(n) + 1e-4
    with pytest.raises(ValueError, match="columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        TableParams(csv="bad.csv").resolve(tmp_path)


POPULATIONS = {
    "pcm": dict(device="pcm"),
    "rram": dict(device="rram"),
    "sram": dict(device="sram"),
    "table": dict(device="table", device_params=dict(points=dict(g=(0.0, 1.0), sigma_prog=(0.3, 1.0), mu_nu=(0.1, 0.05), sigma_nu=(0.04, 0.01)))),
    "ideal": dict(device="ideal"),
    "pcm-everything": dict(
        device="pcm", mapping="multi_pair", mapping_params=dict(bits=4, on_off_ratio=10.0), read_noise="per_vector",
        periphery=PeripherySpec(dac=DACSpec(bits=6), adc=ADCSpec(bits=6), output_noise=0.02,
                                op_drift=OpDriftSpec(gain=0.05, offset=0.02, granularity="neuron"), mismatch=MismatchSpec(gain=0.02, offset=0.01)),
        tile=TileSpec(rows=48, cols=48),
    ),
    "rram-unipolar": dict(device="rram", mapping="unipolar", mapping_params=dict(bits=2, block_cols=8)),
}


@pytest.mark.parametrize("name", list(POPULATIONS))
def test_every_model_draws_only_from_the_chips_stream(name: str) -> None:
    cfg = dict(POPULATIONS[name])
    device = cfg.pop("device")
    mapping = cfg.pop("mapping", "differential")
    pop = Population.build(
        device, DEVICES.get(device).params(**cfg.pop("device_params", {})),
        mapping, MAPPINGS.get(mapping).params(**cfg.pop("mapping_params", {})),
        Variation(within=WithinChip(sigma=0.03), between=BetweenChip(sigma=0.05, granularity="layer")), **cfg,
    )  # fmt: skip
    torch.manual_seed(0)
    for model, shape in (("mlp", (1, 8, 8)), ("lenet", (1, 8, 8))):
        params = MLPParams(hidden=(64, 32)) if model == "mlp" else LeNetParams(channels=(4, 8), hidden=(16,))
        net = AnalogNetwork(build_model(model, params, shape, 10))
        x = torch.rand(24, *shape)
        block = pop.program(net.nominal, chip_stream(5, name, range(9)), net.granules)
        alone = pop.program(net.nominal, chip_stream(5, name, [6]), net.granules)
        # per-vector noise is keyed by the sample's index, so the MLP may also split its samples
        # differently (a convolution's float rounding depends on the sample batch: kept fixed)
        step = 8 if model == "mlp" else 24
        out_block = torch.cat([net.forward(x[a : a + step], block.read(86400.0), sample_offset=a) for a in range(0, 24, step)], 1)
        out_alone = net.forward(x, alone.read(86400.0))
        assert torch.equal(out_block[6], out_alone[0]), (name, model)
        if name != "ideal":
            assert not torch.equal(out_block[5], out_block[6])


@pytest.mark.parametrize("mapping", ["differential", "unipolar"])
def test_a_predistorting_mapper_undoes_the_curve_and_the_asymmetry_it_knows(mapping: str) -> None:
    """Continuous devices: the pre-distorted round trip is exact whatever the curve and the
    asymmetry; n-bit devices: it picks the level nearest the target in conductance space,
    so its error is never larger than the plain mapper's, and much smaller at 4 bits."""
    w = _weights(30, 40)
    if mapping == "unipolar":
        w = w.abs()
    curve = dict(nonlinearity=3.0, asymmetry=0.2, on_off_ratio=10.0)
    exact = _roundtrip(_ideal(mapping, predistort=True, **curve), w)
    torch.testing.assert_close(exact, w, rtol=1e-9, atol=1e-12)
    for bits in (2, 4):
        plain = (_roundtrip(_ideal(mapping, bits=bits, **curve), w) - w).pow(2).mean().sqrt()
        pre = (_roundtrip(_ideal(mapping, bits=bits, predistort=True, **curve), w) - w).pow(2).mean().sqrt()
        assert pre <= plain
        if bits == 4:
            assert pre < 0.5 * plain


# -- writing programmed devices again (on-chip learning's write-back) ---------------------


def _pcm(**params: object) -> Population:
    device, mapping = DEVICES.get("pcm"), MAPPINGS.get("differential")
    return Population(device.obj(device.params(**params)), mapping.obj(mapping.params()), Variation())


def test_a_rewritten_layer_drifts_from_its_write() -> None:
    """Without programming and read noise a PCM layer written again at t_w reads, 20 s
    later, exactly the new weights (the drift factor (t/t0)^−ν is 1 at t0 = 20 s of age),
    while the layers not written have drifted since the first programming; a day after the
    write the rewritten layer has drifted by (86 400 s / 20 s)^−ν with the new write's ν."""
    pop = _pcm(prog_noise_scale=0.0, read_noise_scale=0.0)
    w, new = _weights(), _weights(seed=1) * 0.5
    chips = pop.program([w, w], chip_stream(0, "rewrite", range(4)))
    t_w = 30 * 86400.0
    written = chips.rewritten(1, new.expand(4, *new.shape), t_w, "test")
    fresh = pop.program([new], chip_stream(0, "rewrite", range(4))).read(20.0).layers[0].weight  # new weights, read at 20 s of age
    scale = chips.layers[1].w_max
    torch.testing.assert_close(written.read_layer(1, t_w + 20.0).weight, fresh, rtol=0, atol=1e-6 * float(scale.max()))
    torch.testing.assert_close(written.read_layer(0, t_w + 20.0).weight, chips.read_layer(0, t_w + 20.0).weight)  # untouched
    assert (chips.read_layer(0, t_w + 20.0).weight.abs().sum() < 0.8 * w.abs().sum() * 4)  # a month of drift
    g_prog, nu = written.programmed(1, "g_prog"), written.programmed(1, "nu")
    decoded = pop.mapping.decode(g_prog * (86400.0 / 20.0) ** (-nu), chips.layers[1].coeff, scale, pop.device.g_max)
    torch.testing.assert_close(written.read_layer(1, t_w + 86400.0).weight, decoded, rtol=1e-5, atol=1e-6 * float(scale.max()))
    assert not torch.equal(nu, chips.programmed(1, "nu"))  # the write drew its own drift exponents


def test_a_rewrite_draws_fresh_programming_noise_of_the_devices_law() -> None:
    """The programming error of a write is a fresh draw of the same law as the first
    programming: over 64 chips × 600 weights its spread matches a first programming's
    (standard errors from the sample size) and it is uncorrelated with the first error
    (a rewrite drawing the first programming's normals again would give r = 1)."""
    pop = _pcm(drift_scale=0.0, read_noise_scale=0.0)
    w = _weights()
    n = 64
    chips = pop.program([w], chip_stream(1, "noise", range(n)))
    written = chips.rewritten(0, w.expand(n, *w.shape), 3600.0, "test")
    first = chips.read_layer(0, 20.0).weight - w
    again = written.read_layer(0, 3620.0).weight - w
    k = first.numel()
    s1, s2 = first.std(), again.std()
    assert abs(float(s2 / s1) - 1) < 4 * math.sqrt(1 / k)  # ratio of two sample std's: se ≈ √(1/k)
    # about each weight's mean error over the chips (the clamp at G = 0 biases small conductances alike)
    r = float(torch.corrcoef(torch.stack([(first - first.mean(0)).flatten(), (again - again.mean(0)).flatten()]))[0, 1])
    assert abs(r) < 4 / math.sqrt(k)


def test_a_rewrite_keeps_the_devices_variation_and_a_unipolar_columns_sign() -> None:
    """The same devices: their within-chip variation draws are the first programming's; a
    unipolar block keeps its wiring's sign (weights of the other sign write as 0); an SRAM
    cell takes new values through its own fabrication mismatch."""
    w = _weights().abs()
    pop = _ideal("differential").__class__(
        DEVICES.get("ideal").obj(DEVICES.get("ideal").params()), MAPPINGS.get("unipolar").obj(MAPPINGS.get("unipolar").params()),
        Variation.model_validate({"within": {"sigma": 0.2}}),
    )  # fmt: skip
    chips = pop.program([w], chip_stream(2, "keep", range(3)))
    gain = chips.read(20.0).layers[0].weight / w  # each device's variation factor
    new = -w.clone()
    new[:, :5] = w[:, :5] * 0.5  # mostly the other sign: the block's sign stays +
    written = chips.rewritten(0, new.expand(3, *new.shape), 100.0, "test").read(120.0).layers[0].weight
    torch.testing.assert_close(written[:, :, :5], (gain * w * 0.5)[:, :, :5], rtol=1e-5, atol=1e-7)
    assert torch.equal(written[:, :, 5:], torch.zeros_like(written[:, :, 5:]))
    sram = Population(SRAMDevice(SRAMParams(mismatch=0.1)), MAPPINGS.get("differential").obj(MAPPINGS.get("differential").params()), Variation())
    chips = sram.program([w], chip_stream(3, "cells", range(3)))
    factor = chips.read(1.0).layers[0].weight / w
    again = chips.rewritten(0, (w * 0.5).expand(3, *w.shape), 10.0, "test").read(11.0).layers[0].weight
    torch.testing.assert_close(again, factor * w * 0.5, rtol=1e-5, atol=1e-7)


# -- unipolar crossbars: the reference column -------------------------------------------


def _unipolar_rram(**params: object) -> Population:
    device, mapping = DEVICES.get("rram"), MAPPINGS.get("unipolar")
    return Population(device.obj(device.params(**params)), mapping.obj(mapping.params()), Variation(), TileSpec(rows=16, cols=8))


def test_a_unipolar_column_subtracts_its_reference_column() -> None:
    """A unipolar crossbar with G_min > 0 removes each column's G_min·Σx offset with a
    reference column (a device at G_min per input row, in every column of tiles), not
    with the nominal G_min for free: a weight's error is its own device's deviation less
    its row's reference device's, so (i) errors of two outputs in one column of tiles at
    one input share the reference's variance (covariance ≈ Var(ref)), (ii) in different
    columns of tiles they do not, and (iii) each error's variance is about twice one
    device's. Off-state spread σ 0.25; tolerances from the number of samples. Pairs need no
    reference; without device noise the reference removes exactly G_min."""
    w = _weights(16, 32).abs() * (torch.rand(16, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.3)
    pop = _unipolar_rram(sigma_on=0.0, relax_mean=0.0, relax_sigma=0.0, read_noise=0.0)  # off-state spread only
    n = 2000
    chips = pop.program([w], chip_stream(4, "ref", range(n)))
    assert chips.layers[0].reference is not None
    e = chips.read(20.0).layers[0].weight - w  # (C, 16, 32)
    zero = (w == 0)  # devices at G_min: their error is the off-state spread alone
    # pick pairs of zero weights at one input: outputs 0..7 share tile column 0, 8..15 tile column 1
    same, other, own = [], [], []
    for j in range(32):
        z0 = [o for o in range(8) if zero[o, j]]
        z1 = [o for o in range(8, 16) if zero[o, j]]
        if len(z0) >= 2:
            same.append(float(torch.mean(e[:, z0[0], j] * e[:, z0[1], j]) - e[:, z0[0], j].mean() * e[:, z0[1], j].mean()))
            own.append(float(e[:, z0[0], j].var()))
        if z0 and z1:
            other.append(float(torch.corrcoef(torch.stack([e[:, z0[0], j], e[:, z1[0], j]]))[0, 1]))
    se = 1 / math.sqrt(n)
    cov, var = float(np.mean(same)), float(np.mean(own))
    assert abs(cov / var - 0.5) < 6 * se  # Var(e) = Var(own) + Var(ref), Cov = Var(ref): ratio ½
    assert abs(float(np.mean(other))) < 6 * se / math.sqrt(len(other))
    quiet = _unipolar_rram(sigma_on=0.0, sigma_off=0.0, relax_mean=0.0, relax_sigma=0.0, read_noise=0.0)
    torch.testing.assert_close(quiet.program([w], chip_stream(4, "ref", range(2))).read(20.0).layers[0].weight[0], w, rtol=1e-6, atol=1e-9)
    pair = Population(pop.device, MAPPINGS.get("differential").obj(MAPPINGS.get("differential").params()), Variation())
    assert pair.program([w], chip_stream(4, "ref", range(2))).layers[0].reference is None
