"""Compiled CPU fast paths (numba), each beside the readable formula it computes.

The readable formulas are the model: ``rng.py`` (the streams), ``hardware/pcm.py``
(PCM programming and reads), ``hardware/periphery.py`` (converters) and
``analog/layers.py`` (neurons, pooling). The passes here are an implementation detail
of the CPU path: they do the same float32 operations in the same order (no fast-math,
no fused multiply-add), so they give the same bits, and the tests compare each with its
formula. On other devices (CUDA) the tensor formulas run.

- ``generator``: the counter-based generator's integer hash (SplitMix64) and fields;
- ``pcm``: PCM programming and reads (constants by name: ``pcm.PROGRAM_CONSTANTS``);
- ``converters``: per-row maxima, DAC rounding, ADC clipping and rounding;
- ``neurons``: the neuron stage (gain, offset, bias, ReLU) and max-pooling;
- ``products``: matrix products and convolutions with one summation order whatever the
  shapes (each output an fma chain in index order; ``analog/invariant.py``).
"""

from __future__ import annotations

from .converters import abs_max_rows, adc_rows, quantise_rows
from .generator import box_muller_finish, uniform_fields, window_fields
from .neurons import max_pool_planes, neuron_epilogue
from .products import conv2d_chips, conv2d_chips_backward, matmul_batched
from .pcm import pcm_floor_normalised, pcm_program_finish, pcm_read_decode_finish, pcm_read_finish, pcm_read_windows

__all__ = [
    "abs_max_rows", "adc_rows", "box_muller_finish", "conv2d_chips", "conv2d_chips_backward", "matmul_batched", "max_pool_planes", "neuron_epilogue", "pcm_floor_normalised",
    "pcm_program_finish", "pcm_read_decode_finish", "pcm_read_finish", "pcm_read_windows", "quantise_rows",
    "uniform_fields", "window_fields",
]  # fmt: skip
