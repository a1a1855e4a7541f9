"""Chip-invariant elementwise evaluation.

PyTorch evaluates elementwise functions such as ``exp``, ``log`` and ``pow`` with SIMD
code on full vectors and with scalar code on the tail of a tensor, and the two can
differ in the last bit. If chip ``c``'s values sat at different positions relative to
the vector boundaries in a block of 64 chips than alone, chip 17 would not be the same
chip in both (README, The same bits, whatever shares a call). Each chip's values are therefore laid out flat and
padded to a multiple of ``rng.ALIGN`` elements before any such function runs, so every
chip always fills whole vectors at the same lanes, whatever the block.
(``tests/test_hardware.py::test_every_model_draws_only_from_the_chips_stream``)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..rng import aligned


def padded(n: int) -> int:
    return aligned(n)


def to_flat(t: torch.Tensor) -> torch.Tensor:
    """``(C, *S)`` -> ``(C, padded(prod(S)))`` (padding with ones, harmless to log and pow);
    a view of ``t`` where it needs no padding and is contiguous (never written to)."""
    c, n = t.shape[0], math.prod(t.shape[1:])
    flat = t.reshape(c, n)
    return flat if padded(n) == n else F.pad(flat, (0, padded(n) - n), value=1.0)


def from_flat(f: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`to_flat` for per-chip shape ``shape``."""
    return f[:, : math.prod(shape)].reshape(f.shape[0], *shape)


def per_chip(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)`` for an elementwise ``fn``, evaluated chip-invariantly; arguments are
    broadcast to their common shape, whose first dimension is the chip."""
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    flat = [to_flat(a.expand(shape)) for a in args]
    return from_flat(fn(*flat), tuple(shape[1:]))
