"""Checks a network, a device model or any other plugin can run to show it keeps mcstudy's
invariants. The test suite runs them on every built-in entry; run them on your own.

- :func:`chip_identity_problems` — a network deployed on noisy chips gives every chip the
  same bits alone as in a block, and every sample the same bits however its set is batched.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

ArrayLike = Any  # a tensor, a NumPy array or anything torch.as_tensor takes


def chip_identity_problems(module: nn.Module, x: ArrayLike, chips: int = 3, splits: Sequence[int] = (1, 4), seed: int = 0) -> list[str]:
    """Where ``module`` on chips breaks chip identity, for a batch of inputs ``x`` (N ≥ 2
    samples first, as the module takes them; a tensor or an array, converted to float32):
    on PCM chips with within-chip variation, 16-row tiles and per-vector read noise, once
    with exact converters and once with 8-bit DAC and ADC and output noise, each chip of a
    block of ``chips`` is compared with the same chip alone, and the block's outputs with
    ``x`` evaluated in two pieces at each of ``splits`` (0 < split < N). Empty when every
    comparison is bit-identical; a network mcstudy cannot run per chip and per sample (an
    operation across samples, such as a batch statistic) is one problem, with the reason.
    Inputs the module itself does not take raise ``ValueError``."""
    from .analog import AnalogNetwork
    from .errors import McStudyError
    from .hardware import Population, TileSpec, Variation, WithinChip
    from .hardware.mapping import DifferentialPair, Encoding
    from .hardware.pcm import PCMDevice, PCMParams
    from .hardware.periphery import ADCSpec, DACSpec, PeripherySpec
    from .rng import chip_stream

    x = torch.as_tensor(x)
    x = x.float() if x.is_floating_point() else x
    if x.dim() == 0 or x.shape[0] < 2:
        raise ValueError(f"x must be a batch of at least 2 samples (samples first), got shape {tuple(x.shape)}")
    wrong = [s for s in splits if not 0 < s < x.shape[0]]
    if wrong:
        raise ValueError(f"splits must lie between 0 and the {x.shape[0]} samples (exclusive), got {wrong}")
    if chips < 1:
        raise ValueError(f"chips must be at least 1, got {chips}")
    try:
        with torch.no_grad():
            module.eval()(x[:2])
    except Exception as e:  # the module's own error, with the shape it was given
        raise ValueError(f"the module does not run on inputs of shape {tuple(x[:2].shape)} (2 samples of x): {type(e).__name__}: {e}") from None
    try:
        net = AnalogNetwork(module)
        net.forward(x[:2], net.nominal_read())
    except McStudyError as e:
        return [f"mcstudy cannot run this network chip by chip and sample by sample: {e}"]
    converters = PeripherySpec(dac=DACSpec(bits=8), adc=ADCSpec(bits=8), output_noise=0.01)
    problems: list[str] = []
    for label, periphery in (("exact converters", PeripherySpec()), ("8-bit converters and output noise", converters)):
        pop = Population(
            PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(within=WithinChip(sigma=0.05)), TileSpec(rows=16), periphery, read_noise="per_vector"
        )
        block_read = pop.program(net.nominal, chip_stream(seed, "identity", range(chips)), net.granules).read(3600.0)
        block = net.forward(x, block_read)
        for c in range(chips):
            alone = net.forward(x, pop.program(net.nominal, chip_stream(seed, "identity", [c]), net.granules).read(3600.0))
            if not torch.equal(block[c], alone[0]):
                problems.append(f"{label}: chip {c} of a block of {chips} differs from the chip alone (max |Δ| {_largest(block[c], alone[0])})")
        for split in splits:
            if not 0 < split < x.shape[0]:
                continue
            pieces = torch.cat([net.forward(x[:split], block_read), net.forward(x[split:], block_read, sample_offset=split)], 1)
            if not torch.equal(block, pieces):
                problems.append(f"{label}: {x.shape[0]} samples at once differ from {split} + {x.shape[0] - split} (max |Δ| {_largest(block, pieces)})")
    return problems


def _largest(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.double() - b.double()).abs()
    return f"{float(d[d == d].max()) if bool((d == d).any()) else float('nan'):.3g}"
