"""The physics library: mappings, tiles, periphery, device models and read-noise modes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mcstudy.analog import AnalogNetwork
from mcstudy.hardware import DEVICES, MAPPINGS, PeripherySpec, Population, TileGrid, TileSpec, Variation
from mcstudy.hardware.ideal import IdealDevice, IdealParams
from mcstudy.hardware.periphery import ADCSpec, DACSpec, MismatchSpec, OpDriftSpec, quantise_symmetric
from mcstudy.hardware.rram import RRAMDevice, RRAMParams
from mcstudy.hardware.sram import SRAMDevice, SRAMParams
from mcstudy.hardware.table import TableDevice, TableParams, TablePoints, interp
from mcstudy.hardware.variation import BetweenChip, WithinChip
from mcstudy.models import build_model
from mcstudy.models.zoo import LeNetParams, MLPParams
from mcstudy.rng import chip_stream

G_MAX = 25.0


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
        chips = _ideal(mapping, on_off_ratio=20.0).program([_weights()], chip_stream(0, "r", [0]))
        g = chips.programmed(0, "g")
        assert g.min().item() == pytest.approx(G_MAX / 20.0)
        assert g.max().item() <= G_MAX + 1e-9


def test_nonlinearity_and_asymmetry_distort_the_decoded_weights() -> None:
    w = _weights()
    exact = _roundtrip(_ideal("differential", bits=4), w)
    bent = _roundtrip(_ideal("differential", bits=4, nonlinearity=3.0), w)
    # a concave level curve: small weights come out too large, the largest stays
    pos = (w > 0) & (w < w.max() / 2)
    assert (bent[pos].abs() >= exact[pos].abs()).all() and (bent[pos] != exact[pos]).any()
    lop = _roundtrip(_ideal("differential", asymmetry=0.2), w)
    neg = w < 0
    torch.testing.assert_close(lop[neg], 1.2 * w[neg])
    torch.testing.assert_close(lop[~neg], w[~neg])


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


def test_per_vector_read_noise_has_the_output_space_variance() -> None:
    """Each output is Gaussian with variance Σ_j σ_ij² x_j², fresh for every input vector."""
    torch.manual_seed(1)
    net = AnalogNetwork(torch.nn.Sequential(torch.nn.Linear(16, 4, bias=False)).double())
    x = torch.rand(1, 16, dtype=torch.float64).expand(20_000, 16)
    entry = DEVICES.get("pcm")
    pop = Population.build("pcm", entry.params(), "differential", MAPPINGS.get("differential").params(), Variation(), read_noise="per_vector")
    chips = pop.program(net.nominal, chip_stream(2, "v", [0]))
    read = chips.read(86400.0)
    y = net.forward(x, read)[0]
    layer = read.layers[0]
    mean = x[:1] @ layer.weight[0].T
    var = (x[:1] ** 2) @ layer.var[0].T
    n = x.shape[0]
    torch.testing.assert_close(y.mean(0), mean[0], rtol=0, atol=float(5 * var.sqrt().max() / math.sqrt(n)))
    ratio = y.var(0) / var[0]
    assert (ratio - 1).abs().max() < 5 * math.sqrt(2 / n)
    # and it matches sampling a noisy weight matrix per read, in distribution
    per_read = Population(pop.device, pop.mapping, Variation())
    draws = torch.stack([(x[:1] @ per_read.program(net.nominal, chip_stream(2, "v", [0])).read(86400.0, tag=f"r{i}").layers[0].weight[0].T)[0] for i in range(2000)])
    assert ((draws.var(0) / var[0]) - 1).abs().max() < 5 * math.sqrt(2 / 2000)


def test_rram_statistics() -> None:
    p = RRAMParams()
    dev = RRAMDevice(p)
    n = 400_000
    target = torch.full((1, n), 0.5 * p.g_max, dtype=torch.float64)
    state = dev.program(target, chip_stream(0, "rram", [0]))
    log_ratio = torch.log(state["g_prog"] / target)
    sigma = p.sigma_on + (p.sigma_off - p.sigma_on) * 0.5
    assert abs(log_ratio.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    g, s = dev.mean_and_sigma(state, 20.0 * 1e4)  # four decades after t0
    expected = state["g_prog"] * (1 - state["rate"] * 4)
    torch.testing.assert_close(g, expected.clamp(min=0))
    assert abs((g / state["g_prog"]).mean().item() - (1 - 4 * p.relax_mean)) < 5 * 4 * p.relax_sigma / math.sqrt(n)
    torch.testing.assert_close(s, g * p.read_noise)


def test_sram_mismatch_follows_pelgrom() -> None:
    n = 400_000
    target = torch.full((1, n), 0.7, dtype=torch.float64)
    for area in (1.0, 4.0):
        dev = SRAMDevice(SRAMParams(mismatch=0.02, area=area))
        g = dev.read(dev.program(target, chip_stream(0, "sram", [0])), 1e9, chip_stream(0, "x", [0]))
        sigma = 0.02 / math.sqrt(area)
        assert abs((g / 0.7 - 1).std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert not dev.drifts()


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
