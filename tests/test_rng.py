"""The counter-based chip streams: exact bits, statistics, and identity by key."""

from __future__ import annotations

import math

import numpy as np
import torch

from mcstudy.rng import Stream, chip_stream, mix64, mix64_int, tag_hash


def test_mix64_tensor_matches_integer_reference() -> None:
    xs = [0, 1, 2**62 + 12345, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]
    signed = [x - 2**64 if x >= 2**63 else x for x in xs]
    got = mix64(torch.tensor(signed, dtype=torch.int64)).numpy().view(np.uint64)
    want = np.array([mix64_int(x) for x in xs], dtype=np.uint64)
    np.testing.assert_array_equal(got, want)


def test_normal_moments_and_tails() -> None:
    n = 1_000_000
    z = chip_stream(7, "pcm", [0]).child("t").normal(n, dtype=torch.float64)[0].numpy()
    se = 1 / math.sqrt(n)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    # kurtosis of a normal is 3 (sd of the estimate ~ sqrt(24/n))
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 5 * math.sqrt(24 / n)
    # two-sided tail beyond 3 sigma: p = 0.0026998
    p = 0.0026998
    assert abs((np.abs(z) > 3).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_uniform_is_uniform() -> None:
    n = 400_000
    u = chip_stream(1, "x", [3]).uniform(n, dtype=torch.float64)[0].numpy()
    assert u.min() > 0 and u.max() < 1
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    chi2 = (((counts - n / 20) ** 2) / (n / 20)).sum()
    assert chi2 < 43.8  # 99.9th percentile of chi-square with 19 degrees of freedom


def test_chips_are_independent_and_identified_by_index_alone() -> None:
    block = chip_stream(11, "pcm", range(64)).child("program", 0).normal(1000)
    alone = chip_stream(11, "pcm", [17]).child("program", 0).normal(1000)
    assert torch.equal(block[17], alone[0])
    # different chips, populations, seeds and tags give unrelated numbers
    corr = np.corrcoef(block.numpy())
    off = corr[~np.eye(64, dtype=bool)]
    assert np.abs(off).max() < 5 / math.sqrt(1000)
    other_pop = chip_stream(11, "rram", [17]).child("program", 0).normal(1000)
    other_seed = chip_stream(12, "pcm", [17]).child("program", 0).normal(1000)
    other_tag = chip_stream(11, "pcm", [17]).child("program", 1).normal(1000)
    for other in (other_pop, other_seed, other_tag):
        assert abs(np.corrcoef(alone[0].numpy(), other[0].numpy())[0, 1]) < 5 / math.sqrt(1000)


def test_tags_are_typed() -> None:
    assert tag_hash("1") != tag_hash(1) != tag_hash(1.0)
    s = Stream(torch.tensor([5], dtype=torch.int64))
    assert not torch.equal(s.child(1).normal(8), s.child(1.0).normal(8))


def test_compiled_fields_equal_the_tensor_fields() -> None:
    """The CPU kernel and the int64 tensor operations (the CUDA path) give the same bits."""
    from mcstudy.rng import fields, fields_tensor

    keys = chip_stream(3, "x", range(5)).keys
    for first, count in [(0, 1000), (37, 129), (65536 - 5, 70)]:
        a, b = fields(keys, first, count), fields_tensor(keys, first, count)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert float(a[0].min()) > 0 and float(a[0].max()) < 1


def test_box_muller_kernel_matches_the_tensor_formula() -> None:
    """The compiled finish of a normal vs PyTorch's ops: equal up to PyTorch's vectorised
    sqrt, which is within one float32 ulp of the correctly rounded one."""
    from mcstudy.rng import _box_muller, fields_tensor

    u, theta = fields_tensor(chip_stream(1, "bm", range(3)).keys, 0, 4096)
    ref = u.clone().log_().mul_(-2.0 * 1.7 * 1.7).sqrt_().mul_(theta.clone().cos_())
    got = _box_muller(u.clone(), theta.clone(), 1.7)
    assert torch.allclose(got, ref, rtol=3e-7, atol=0)


def test_normal_ranges_do_not_depend_on_start_block_or_chunking() -> None:
    from mcstudy.rng import CHUNK_ELEMENTS

    n = CHUNK_ELEMENTS + 30_000  # more than one chunk per chip
    block = chip_stream(2, "pcm", range(3)).child("read", 1.0, 0)
    whole = block.normal(n)
    assert torch.equal(block.normal_range(CHUNK_ELEMENTS - 77, 1000), whole[:, CHUNK_ELEMENTS - 77 : CHUNK_ELEMENTS + 923])
    alone = chip_stream(2, "pcm", [1]).child("read", 1.0, 0)
    assert torch.equal(alone.normal(n)[0], whole[1])
    scaled = block.normal_range(5, 200, scale=3.0)
    assert torch.allclose(scaled, 3.0 * whole[:, 5:205], rtol=1e-6, atol=1e-6)


def test_normal_tail_frequencies() -> None:
    """Tails of the float32 Box-Muller normals (23-bit uniforms reach 5.77 sigma):
    P(|z| > 4) = 6.334e-5 and P(|z| > 5) = 5.733e-7, within 5 standard errors."""
    n = 4_000_000
    z = chip_stream(8, "tails", [0]).child("t").normal(n)[0].double().numpy()
    for k, p in [(4.0, 6.334e-5), (5.0, 5.733e-7)]:
        assert abs((np.abs(z) > k).mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1 / n
    assert np.abs(z).max() < 5.8
