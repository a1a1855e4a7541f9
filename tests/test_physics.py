"""Device physics against the published PCM model (Nandakumar et al. 2019; Joshi et al. 2020): reference values, and sampled statistics with
tolerances derived from the sample size (5 standard errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mcstudy.hardware import pcm
from mcstudy.hardware.variation import BetweenChip, Variation, WithinChip, apply_variation
from mcstudy.rng import chip_stream

G_MAX = 25.0
N = 1_000_000
# reference table (the published model's values): g, sigma_prog (µS), mu_nu, sigma_nu, Q_s
REFERENCE = [
    (1.0, 1.0554, 0.049, 0.008, 0.0088),
    (0.5, 0.9527, 0.049, 0.008, 0.0138),
    (0.1, 0.4482, 0.0601, 0.0229, 0.0393),
    (0.01, 0.2830, 0.0958, 0.045, 0.1756),
]


@pytest.mark.parametrize("g, s_prog, mu_nu, s_nu, qs", REFERENCE)
def test_reference_table(g: float, s_prog: float, mu_nu: float, s_nu: float, qs: float) -> None:
    t = torch.tensor([g * G_MAX], dtype=torch.float64)
    assert float(pcm.programming_sigma(t)) == pytest.approx(s_prog, abs=6e-5)
    assert float(pcm.drift_mu(t)) == pytest.approx(mu_nu, abs=6e-5)
    assert float(pcm.drift_sigma(t)) == pytest.approx(s_nu, abs=6e-5)
    assert float(pcm.read_noise_qs(t)) == pytest.approx(qs, abs=6e-5)


@pytest.mark.parametrize("t, factor", [(20, 4.18), (3600, 4.77), (86400, 5.09), (365 * 86400, 5.64)])
def test_read_noise_time_factor(t: float, factor: float) -> None:
    # the reference quotes two decimals; at 1 h the equation gives 4.764, quoted as 4.77
    assert pcm.read_noise_time_factor(t) == pytest.approx(factor, abs=0.01)


@pytest.mark.parametrize("t, factor", [(3600, 0.771), (86400, 0.658), (365 * 86400, 0.490)])
def test_drift_factor_for_nu_005(t: float, factor: float) -> None:
    assert float(pcm.drift_factor(torch.tensor(0.05, dtype=torch.float64), t)) == pytest.approx(factor, abs=0.0005)


def _clipped_normal_moments(mu: float, s: float) -> tuple[float, float]:
    """Mean and sd of max(X, 0), X ~ N(mu, s^2)."""
    a = mu / s
    m1 = mu * norm.cdf(a) + s * norm.pdf(a)
    m2 = (mu * mu + s * s) * norm.cdf(a) + mu * s * norm.pdf(a)
    return m1, math.sqrt(m2 - m1 * m1)


def _folded_normal_moments(mu: float, s: float) -> tuple[float, float]:
    """Mean and sd of |X|, X ~ N(mu, s^2)."""
    m1 = s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * norm.cdf(-mu / s))
    return m1, math.sqrt(mu * mu + s * s - m1 * m1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the compiled CPU path and the tensor formulas
@pytest.mark.parametrize("g, s_prog, mu_nu, s_nu, qs", REFERENCE)
def test_programming_statistics(g: float, s_prog: float, mu_nu: float, s_nu: float, qs: float, dtype: torch.dtype) -> None:
    target = torch.full((1, N), g * G_MAX, dtype=dtype)
    g_prog, nu = pcm.program(target, chip_stream(3, "pcm-stats", [0]))
    g_prog, nu, target = g_prog.double(), nu.double(), target.double()
    sigma = float(pcm.programming_sigma(target[:, :1]))
    mean, sd = _clipped_normal_moments(g * G_MAX, sigma)
    assert abs(g_prog.mean().item() - mean) < 5 * sd / math.sqrt(N)
    assert abs(g_prog.std().item() - sd) < 5 * sd / math.sqrt(2 * N)
    mean, sd = _folded_normal_moments(float(pcm.drift_mu(target[:, :1])), float(pcm.drift_sigma(target[:, :1])))
    assert abs(nu.mean().item() - mean) < 5 * sd / math.sqrt(N)
    assert abs(nu.std().item() - sd) < 5 * sd / math.sqrt(2 * N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # compiled CPU path and tensor formulas
@pytest.mark.parametrize("g_max", [25.0, 50.0, 10.0])
@pytest.mark.parametrize("g, s_prog", [(r[0], r[1]) for r in REFERENCE])
def test_programming_noise_scales_with_g_max(g: float, s_prog: float, g_max: float, dtype: torch.dtype) -> None:
    """σ_prog is fitted in µS at G_max = 25 µS and scales by G_max / 25 µS for another G_max
    (aihwkit's PCMLikeNoiseModel): the same relative spread at every G_max."""
    p = pcm.PCMParams(g_max=g_max)
    expected = s_prog * g_max / 25.0
    t = torch.tensor([g * g_max], dtype=torch.float64)
    assert float(pcm.programming_sigma(t, p)) == pytest.approx(expected, abs=6e-5 * g_max / 25.0)
    n = 200_000
    target = torch.full((1, n), g * g_max, dtype=dtype)
    g_prog = pcm.PCMDevice(p).program(target, chip_stream(5, "pcm-gmax", [0]))["g_prog"].double()
    mean, sd = _clipped_normal_moments(g * g_max, expected)
    assert abs(g_prog.mean().item() - mean) < 5 * sd / math.sqrt(n)
    assert abs(g_prog.std().item() - sd) < 5 * sd / math.sqrt(2 * n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [3600.0, 86400.0, 365 * 86400.0])
def test_read_noise_spread_follows_sqrt_log(t: float, dtype: torch.dtype) -> None:
    n = 400_000
    g_prog = torch.full((1, n), 0.5 * G_MAX, dtype=dtype)
    nu = torch.full((1, n), 0.05, dtype=dtype)
    g = pcm.read(g_prog, nu, t, chip_stream(5, "pcm-read", [0])).double()
    g_prog, nu = g_prog.double(), nu.double()
    g_drift = g_prog * pcm.drift_factor(nu, t)
    rel = ((g - g_drift) / (g_drift * pcm.read_noise_qs(g_prog))).flatten()
    factor = pcm.read_noise_time_factor(t)
    assert abs(rel.std().item() - factor) < 5 * factor / math.sqrt(2 * n)
    assert abs(rel.mean().item()) < 5 * factor / math.sqrt(n)


@pytest.mark.parametrize("t", [3600.0, 86400.0, 365 * 86400.0])
def test_median_drift_matches_power_law(t: float) -> None:
    params = pcm.PCMParams(read_noise_scale=0.0, prog_noise_scale=0.0)
    target = torch.full((1, 200_001), 0.5 * G_MAX, dtype=torch.float64)
    g_prog, nu = pcm.program(target, chip_stream(9, "pcm-drift", [0]), params)
    g = pcm.read(g_prog, nu, t, chip_stream(9, "pcm-drift", [0]).child("r"), params)
    median_nu = float(nu.median())
    assert float((g / g_prog).median()) == pytest.approx((t / 20.0) ** -median_nu, rel=1e-9)
    assert median_nu == pytest.approx(0.049, abs=5 * 0.008 * 1.2533 / math.sqrt(200_001))


def test_no_drift_before_t0_and_switches() -> None:
    target = torch.full((2, 1000), 10.0, dtype=torch.float64)
    off = pcm.PCMParams(prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0)
    g_prog, nu = pcm.program(target, chip_stream(1, "p", [0, 1]), off)
    assert torch.equal(g_prog, target) and torch.all(nu == 0)
    assert torch.equal(pcm.read(g_prog, nu, 1e8, chip_stream(1, "p", [0, 1]), off), target)
    g_prog, nu = pcm.program(target, chip_stream(1, "p", [0, 1]), pcm.PCMParams(read_noise_scale=0.0))
    assert torch.equal(pcm.read(g_prog, nu, 5.0, chip_stream(1, "p", [0, 1]), pcm.PCMParams(read_noise_scale=0.0)), g_prog)


def test_compiled_pcm_paths_equal_the_tensor_formulas() -> None:
    """On the CPU, programming and reads run compiled passes between PyTorch's ln/cos/exp
    (kernels.pcm); they must give the tensor formulas' bits for the same normals, and the
    fused read-and-decode the bits of a read followed by the mapping's decode."""
    p = pcm.PCMParams()
    g = torch.rand(3, 70_000, generator=torch.Generator().manual_seed(0)) * G_MAX
    g[:, ::2] = 0.0  # half the devices of a differential pair
    stream = chip_stream(1, "kernels", range(3))
    g_prog, nu, qs = pcm._program_stream(g, stream, p)
    z_prog, z_nu = stream.child("prog").normal(70_000), stream.child("nu").normal(70_000)
    ref_prog, ref_nu = pcm._program_formula(g, z_prog, z_nu, p)
    assert torch.equal(g_prog, ref_prog) and torch.equal(nu, ref_nu) and torch.equal(qs, pcm.read_noise_qs(ref_prog, p))
    # targets shared by every chip (a stride-0 view, no variation) are read from one row
    shared = g[:1].expand(3, -1)
    ref_prog, ref_nu = pcm._program_formula(shared.contiguous(), z_prog, z_nu, p)
    for got, ref in zip(pcm._program_stream(shared, stream, p), (ref_prog, ref_nu, pcm.read_noise_qs(ref_prog, p))):
        assert got.is_contiguous() and torch.equal(got, ref)
    for t in (5.0, 20.0, 3600.0):  # before, at and after t0
        zs = stream.child("read").normal_range(0, 70_000, scale=pcm.read_noise_std(t, p))
        assert torch.equal(pcm._read_stream(g_prog, nu, qs, t, stream, p), pcm._read_formula(g_prog, nu, qs, t, zs, p))


@pytest.mark.parametrize("mapping", ["differential", "multi_pair", "differential_on_off"])
def test_fused_read_and_decode_equals_read_then_decode(mapping: str) -> None:
    from mcstudy.hardware import Population, Variation
    from mcstudy.hardware.mapping import DifferentialPair, Encoding, MultiPair, MultiPairParams

    m = {"differential": DifferentialPair(Encoding()), "multi_pair": MultiPair(MultiPairParams()),
         "differential_on_off": DifferentialPair(Encoding(on_off_ratio=10))}[mapping]  # fmt: skip
    pop = Population(pcm.PCMDevice(pcm.PCMParams()), m, Variation())
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(10, 7, generator=gen), torch.randn(300, 250, generator=gen), torch.randn(33, 129, generator=gen)]
    block = pop.program(weights, chip_stream(0, "fused", range(3)))
    for t in (1.0, 3600.0):
        for i, layer in enumerate(block.layers):
            stream = block.stream.child("read", t, i)
            coeffs, scale = m.plane_coefficients(layer.coeff), m.decode_scale(layer.w_max, G_MAX)
            assert coeffs is not None
            fused = pop.device.read_decoded(layer.state, t, stream, layer.shape, coeffs, m.g_min(G_MAX), scale)
            ref = m.decode_flat(pop.device.read(layer.state, t, stream), layer.shape, layer.coeff, layer.w_max, G_MAX)
            assert fused is not None and torch.equal(fused, ref)


def test_program_is_a_function_of_the_chip_stream() -> None:
    target = torch.full((1, 10_000), 12.5)
    a = pcm.program(target, chip_stream(0, "p", [0]))
    b = pcm.program(target, chip_stream(0, "p", [0]))
    c = pcm.program(target, chip_stream(1, "p", [0]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_variation_granularities() -> None:
    chips, shape = 400, (2, 30, 40)
    target = torch.full(shape, 10.0, dtype=torch.float64)
    stream = chip_stream(4, "var", range(chips))
    # between-chip at chip granularity: one factor per chip, shared by all devices of all layers
    v = Variation(between=BetweenChip(sigma=0.2))
    g0 = apply_variation(v, target, stream, 0, G_MAX)
    g1 = apply_variation(v, target, stream, 1, G_MAX)
    log_gain = torch.log(g0 / 10.0)
    assert torch.equal(log_gain.amin(dim=(1, 2, 3)), log_gain.amax(dim=(1, 2, 3)))
    assert torch.equal(g0, g1)
    per_chip = log_gain[:, 0, 0, 0]
    assert abs(per_chip.std().item() - 0.2) < 5 * 0.2 / math.sqrt(2 * chips)
    # within-chip per device: the configured spread inside one chip
    w = apply_variation(Variation(within=WithinChip(sigma=0.1)), target, stream.select(slice(0, 1)), 0, G_MAX)
    n = w.numel()
    assert abs(torch.log(w / 10.0).std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * n)
    # per column: shared along a column, different between columns
    c = torch.log(apply_variation(Variation(within=WithinChip(sigma=0.1, granularity="column")), target, stream, 0, G_MAX) / 10)
    assert torch.equal(c.amin(dim=(1, 3)), c.amax(dim=(1, 3)))
    assert c[0, 0, :, 0].unique().numel() == shape[1]
    # per layer: differs between layers of the same chip
    lay = Variation(between=BetweenChip(sigma=0.2, granularity="layer"))
    assert not torch.equal(apply_variation(lay, target, stream, 0, G_MAX), apply_variation(lay, target, stream, 1, G_MAX))
    # additive normal: offsets in units of G_max, never a negative conductance
    add = apply_variation(Variation(within=WithinChip(sigma=0.5, kind="normal")), target, stream, 0, G_MAX)
    assert add.min() >= 0


def test_components_use_separate_streams() -> None:
    target = torch.full((2, 5, 5), 10.0, dtype=torch.float64)
    stream = chip_stream(4, "var", range(8))
    only_within = apply_variation(Variation(within=WithinChip(sigma=0.1)), target, stream, 0, G_MAX)
    both = apply_variation(Variation(within=WithinChip(sigma=0.1), between=BetweenChip(sigma=0.1)), target, stream, 0, G_MAX)
    ratio = both / only_within  # = the between-chip factor alone
    assert torch.allclose(ratio.amin(dim=(1, 2, 3)), ratio.amax(dim=(1, 2, 3)))
    assert np.unique(np.round(ratio[:, 0, 0, 0].numpy(), 12)).size == 8


def test_a_chips_devices_do_not_depend_on_windows_or_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programming and reads run every chip of a block at once in windows sized from
    ``rng.CHUNK_ELEMENTS``; a chip's programmed state and reads (plain and fused with the
    decode) must have the same bits whatever the window size and whoever shares its block."""
    from mcstudy import rng
    from mcstudy.hardware import Population, Variation
    from mcstudy.hardware.mapping import DifferentialPair, Encoding

    m = DifferentialPair(Encoding())
    pop = Population(pcm.PCMDevice(pcm.PCMParams()), m, Variation())
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(300, 250, generator=gen), torch.randn(10, 5, generator=gen), torch.randn(33, 129, generator=gen)]

    def run(chunk: int, chips: list[int]) -> list[torch.Tensor]:
        monkeypatch.setattr(rng, "CHUNK_ELEMENTS", chunk)
        block = pop.program(weights, chip_stream(0, "windows", chips))
        out = [v for layer in block.layers for v in layer.state.values()]
        for t in (1.0, 3600.0):
            out += [lr.weight for lr in block.read(t).layers]
            out += [pop.device.read(layer.state, t, block.stream.child("read", t, i)) for i, layer in enumerate(block.layers)]
        return [x[chips.index(1)] for x in out]

    reference = run(262_144, [0, 1, 2])
    for chunk, chips in ((4096, [0, 1, 2]), (1 << 20, [1]), (64, [5, 1])):
        assert all(torch.equal(a, b) for a, b in zip(run(chunk, chips), reference, strict=True))


def test_the_compiled_programming_pass_takes_its_constants_by_name() -> None:
    """kernels.pcm.PROGRAM_CONSTANTS names a PCM parameter (or the floor) at every index the
    compiled pass reads, so a parameter cannot land in another's slot."""
    from mcstudy.hardware.pcm import G_FLOOR, PCMParams, _program_constants
    from mcstudy.kernels import pcm as k

    p = PCMParams(drift_scale=0.5, g_max=40.0)
    consts = _program_constants(p)
    assert len(consts) == len(k.PROGRAM_CONSTANTS) == k.FLOOR + 1
    for i, name in enumerate(k.PROGRAM_CONSTANTS):
        expected = G_FLOOR if name == "floor" else getattr(p, name)
        assert consts[i] == np.float32(expected), name
    assert consts[k.DRIFT_SCALE] == np.float32(0.5) and consts[k.G_MAX] == np.float32(40.0)


# -- reads of one device at different times ----------------------------------------------

DAY, YEAR = 86400.0, 365 * 86400.0


def _law(t1: float, t2: float, p: pcm.PCMDriftReadParams) -> float:
    """The 1/f structure function: Corr = (D(t₁) + D(t₂) − D(|t₂ − t₁|)) / (2√(D(t₁)·D(t₂)))."""
    d = [math.log((t + p.t_read) / (2 * p.t_read)) for t in (t1, t2, abs(t2 - t1))]
    return (d[0] + d[1] - d[2]) / (2 * math.sqrt(d[0] * d[1]))


def _noise(mapping: str = "differential", read_noise: str = "per_read", n: int = 3000):  # type: ignore[no-untyped-def]
    from mcstudy.hardware import MAPPINGS, Population

    p = pcm.PCMParams(prog_noise_scale=0.0, drift_scale=0.0)  # chips programmed alike: they differ by read noise alone
    pop = Population(pcm.PCMDevice(p), MAPPINGS.get(mapping).obj(MAPPINGS.get(mapping).params()), Variation(), read_noise=read_noise)
    w = torch.sign(torch.randn(8, 8, generator=torch.Generator().manual_seed(0))) * 0.75  # |w| large: Q_s small, no clamp at 0 S
    return pop, w, pop.program([w], chip_stream(9, "joint", range(n))), p


def test_reads_at_different_times_share_variance_as_the_1_over_f_law_says() -> None:
    """A chip's reads at its scheduled times are one joint draw: over 3,000 chips programmed
    alike, the correlation of each weight's read error between any two of 20 s, 1 h, 1 d,
    1 mo and 1 y is the law's (1 d vs 1 y: 0.451), each within 5 standard errors of the
    sample correlation ((1 − ρ²)/√n, over 64 independent weights); each read's variance is
    still D(t). Without a schedule the reads are independent (correlation 0)."""
    pop, w, chips, p = _noise()
    times = [20.0, 3600.0, DAY, 30 * DAY, YEAR]
    joint = chips.scheduled(times)
    e = torch.stack([joint.read(t).layers[0].weight - w for t in times])  # (T, chips, 8, 8)
    n = e.shape[1]
    for a in range(len(times)):
        for b in range(a + 1, len(times)):
            x, y = e[a].flatten(1), e[b].flatten(1)
            r = ((x - x.mean(0)) * (y - y.mean(0))).mean(0) / (x.std(0) * y.std(0))  # per weight, over the chips
            law = _law(times[a], times[b], p)
            se = (1 - law**2) / math.sqrt(n * x.shape[1])
            assert abs(float(r.mean()) - law) < 5 * se, (times[a], times[b], float(r.mean()), law)
    assert _law(DAY, YEAR, p) == pytest.approx(0.4512, abs=1e-3)
    single = torch.stack([chips.read(t).layers[0].weight - w for t in (DAY, YEAR)])
    r = float(torch.corrcoef(torch.stack([single[0].flatten(), single[1].flatten()]))[0, 1])
    assert abs(r) < 5 / math.sqrt(single[0].numel())
    ratio = (e[3].var(0) / single[0].var(0)).mean()  # the 1-month read's variance is unchanged by the joint draw (vs 1 d: D ratio)
    expected = math.log((30 * DAY + p.t_read) / (2 * p.t_read)) / math.log((DAY + p.t_read) / (2 * p.t_read))
    assert abs(float(ratio) - expected) < 5 * math.sqrt(4 / n / 64) * expected


@pytest.mark.parametrize("read_noise", ["per_read", "per_vector"])
def test_joint_reads_keep_chip_identity(read_noise: str) -> None:
    """A chip's joint reads, and a readout with another tag, are the same alone as in any block."""
    pop, w, _, _ = _noise(read_noise=read_noise, n=1)
    times = [20.0, DAY, YEAR]
    block = pop.program([w], chip_stream(9, "joint", range(5))).scheduled(times)
    alone = pop.program([w], chip_stream(9, "joint", [3])).scheduled(times)
    for t in times:
        for tag in ("read", "reference"):
            a, b = block.read(t, tag).layers[0], alone.read(t, tag).layers[0]
            assert torch.equal(a.weight[3], b.weight[0])
            assert (a.var is None) == (b.var is None) and (a.var is None or torch.equal(a.var[3], b.var[0]))


def test_a_readout_at_a_study_time_shares_what_the_law_gives_reads_one_second_apart() -> None:
    """A readout with another purpose (a reference or tuning read) at a study time is taken
    1 s after the study's read there: over 3,000 chips their errors correlate as the law
    says for reads 1 s apart at 20 s (0.59), not 1 (the same read) and not 0."""
    from mcstudy.vocabulary import READOUT_INTERVAL_S

    pop, w, chips, p = _noise()
    joint = chips.scheduled([20.0, DAY])
    a = (joint.read(20.0).layers[0].weight - w).flatten(1)
    b = (joint.read(20.0, tag="reference").layers[0].weight - w).flatten(1)
    r = float((((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0))).mean())
    law = _law(20.0, 20.0 + READOUT_INTERVAL_S, p)
    assert law == pytest.approx(0.59, abs=0.01)
    assert abs(r - law) < 5 * (1 - law**2) / math.sqrt(a.numel())


def test_per_vector_products_at_two_times_correlate_as_reads_do() -> None:
    """Under ``read_noise: per_vector`` a product's noise is a shared part (drawn jointly over
    the schedule) plus a fresh part: two products of one chip at 1 d and 1 y correlate as
    two reads do (0.451; the fresh parts are independent, the shared parts carry the law's
    whole covariance), over 3,000 chips programmed alike."""
    from mcstudy.analog import AnalogNetwork

    pop, w, chips, p = _noise(read_noise="per_vector")
    net = AnalogNetwork(torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False)))
    x = torch.rand(1, 8, generator=torch.Generator().manual_seed(1))
    joint = chips.scheduled([DAY, YEAR])
    y1, y2 = (net.forward(x, joint.read(t))[:, 0] for t in (DAY, YEAR))  # (chips, 8): the crossbar's outputs for x
    ys = [(y - y.mean(0)) for y in (y1, y2)]
    r = float(((ys[0] * ys[1]).mean(0) / (ys[0].std(0) * ys[1].std(0))).mean())
    law = _law(DAY, YEAR, p)
    assert abs(r - law) < 5 * (1 - law**2) / math.sqrt(y1.numel())
