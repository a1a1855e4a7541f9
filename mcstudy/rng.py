"""Counter-based random streams: randomness is an argument, keyed by identity.

Every random number mcstudy draws for a chip is a pure function of
``(study seed, population, chip index, tag path, element index)``. Nothing depends on
which worker, block, executor or device (CPU or CUDA) produced it, nor on what was
drawn before: chip 17 is the same physical chip alone or inside a block of 64, in a
serial run or on a Ray cluster, and on every training variant (common random numbers).

The generator is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): element ``i`` of a
stream with 64-bit key ``k`` is ``mix64(k + (i + 1) * golden)``. Keys of sub-streams are
derived by hashing a tag into the parent key (``Stream.child``), as JAX's ``fold_in``
does. Each normal comes from its own 64-bit output: two 23-bit fields give a uniform
``u`` and an angle ``θ``, and ``z = √(−2 ln u)·cos θ`` (Box-Muller, first output), in
float32; tails reach 5.8 sigma. A chip's elements are generated in aligned chunks, so
SIMD and scalar code paths never split its numbers differently in another block.

The integer hash runs in a compiled CPU kernel (``kernels.generator``) or, on other devices, as
int64 torch operations with two's-complement wrap-around and logical right shifts
emulated by masking; ``tests/test_rng.py`` checks both bit for bit against a
plain-integer reference.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit integer as the int64 value with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN_S, _M1_S, _M2_S = _signed(_GOLDEN), _signed(_M1), _signed(_M2)


def mix64_int(x: int) -> int:
    """SplitMix64 finaliser on a Python integer (reference implementation)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on an int64 tensor (same bits as :func:`mix64_int`)."""
    x = x ^ _srl(x, 30)
    x = x * _M1_S
    x = x ^ _srl(x, 27)
    x = x * _M2_S
    return x ^ _srl(x, 31)


def tag_hash(*tags: object) -> int:
    """A 64-bit hash of a tag path (strings, ints, floats), stable across processes."""
    text = "\x1f".join(_tag_text(t) for t in tags)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _tag_text(t: object) -> str:
    if isinstance(t, bool):
        return f"b:{t}"
    if isinstance(t, int):
        return f"i:{t}"
    if isinstance(t, float):
        return f"f:{t.hex()}"
    if isinstance(t, str):
        return f"s:{t}"
    raise TypeError(f"random-stream tags must be str, int or float, not {type(t).__name__}")


ALIGN = 64  # elements: transcendental functions always run on whole aligned groups of a chip's elements
CHUNK_ELEMENTS = 262144  # elements of a window of work (1 MiB of float32): cache-sized temporaries
_TWO_PI = 2.0 * math.pi
_FIELD = 2.0**-23


def aligned(m: int) -> int:
    """``m`` rounded up to a multiple of :data:`ALIGN`."""
    return -(-m // ALIGN) * ALIGN


def window_width(rows: int, n: int) -> int:
    """Columns of a window over ``rows`` rows of ``n`` columns each (e.g. every plane of every
    chip of a block): a multiple of :data:`ALIGN` with about :data:`CHUNK_ELEMENTS`
    elements in all (at least one aligned group per row), and no wider than the row where
    it holds an aligned group, so a window's aligned span always fits inside the row.
    Windows are for speed only: every element gets the same bits whatever the window."""
    return min(max(ALIGN, CHUNK_ELEMENTS // rows // ALIGN * ALIGN), max(ALIGN, n // ALIGN * ALIGN))


def chunks(n_chips: int, n: int) -> Iterator[tuple[int, slice]]:
    """``(chip, columns)`` pieces of a ``(n_chips, n)`` per-chip layout, each contiguous and
    small enough for its temporaries to stay in cache: chip by chip, in column ranges of
    :data:`CHUNK_ELEMENTS` (a multiple of the alignment). The pieces of a chip are the
    same whatever the block, so chunked elementwise code gives every chip the same
    numbers alone or in any block."""
    for c in range(n_chips):
        for a in range(0, n, CHUNK_ELEMENTS):
            yield c, slice(a, min(a + CHUNK_ELEMENTS, n))


def fields(
    keys: torch.Tensor, first: int, count: int, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two uniforms of elements ``first..first+count-1`` of each key's stream, as float32
    ``(C, count)``: ``u = (k₁ + ½)·2⁻²³`` in (0, 1) and ``θ = 2π·(k₂ + ½)·2⁻²³``, where
    ``k₁ = b >> 41`` and ``k₂ = (b >> 9) & (2²³ − 1)`` are 23-bit fields of the element's
    output ``b = mix64(key + (i + 1)·φ)``. Exact in float32, so the compiled CPU kernel
    (``kernels.generator``) and :func:`fields_tensor` (any device) give the same bits. ``out``:
    two contiguous float32 tensors of ``C·count`` elements to write them to, on the CPU."""
    if keys.device.type == "cpu":
        from .kernels import uniform_fields

        return uniform_fields(keys, first, count, out)
    return fields_tensor(keys, first, count)


def fields_tensor(keys: torch.Tensor, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fields` as int64 tensor operations, on the keys' device."""
    counter = torch.arange(first + 1, first + count + 1, dtype=torch.int64, device=keys.device) * _GOLDEN_S
    b = mix64(keys[:, None] + counter[None, :])
    u = (_srl(b, 41).to(torch.float32) + 0.5) * _FIELD
    theta = ((_srl(b, 9) & 0x7FFFFF).to(torch.float32) + 0.5) * _FIELD * _TWO_PI
    return u, theta


def _box_muller(u: torch.Tensor, theta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``√(−2·s²·ln u)·cos θ`` in place of ``u`` (float32): one normal of standard deviation
    ``s = scale`` per element (the first output of the Box-Muller transform; tails to 5.8 σ).
    The scale costs nothing here; ``scale = 1`` gives standard normals. On the CPU the
    arithmetic after ln and cos runs in one compiled pass (same bits)."""
    u.log_()
    theta.cos_()
    if u.device.type == "cpu" and u.dim() == 2 and u.is_contiguous() and theta.is_contiguous():
        from .kernels import box_muller_finish

        flat = u.view(-1).numpy()
        box_muller_finish(flat, theta.view(-1).numpy(), np.float32(-2.0 * scale * scale), flat)
        return u
    return u.mul_(-2.0 * scale * scale).sqrt_().mul_(theta)


@dataclass(frozen=True)
class Stream:
    """Independent random streams for a block of chips: one int64 key per chip.

    ``normal(*shape)`` returns a tensor of shape ``(n_chips, *shape)`` whose row ``c``
    depends only on chip ``c``'s key, the tag path and the element index.
    """

    keys: torch.Tensor  # (C,) int64

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def child(self, *tags: object) -> "Stream":
        """The sub-stream named by ``tags`` (e.g. ``child("read", layer, t)``)."""
        return Stream(mix64(self.keys ^ _signed(tag_hash(*tags))))

    def select(self, index: torch.Tensor | slice) -> "Stream":
        return Stream(self.keys[index])

    def bits(self, n: int) -> torch.Tensor:
        """``(C, n)`` raw 64-bit outputs (int64)."""
        counter = torch.arange(1, n + 1, dtype=torch.int64, device=self.device) * _GOLDEN_S
        return mix64(self.keys[:, None] + counter[None, :])

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform numbers in (0, 1) with 53 random bits, shape ``(C, *shape)``."""
        n = math.prod(shape)
        u = (_srl(self.bits(n), 11).to(torch.float64) + 0.5) * (2.0**-53)
        return u.to(dtype).reshape(self.n, *shape)

    # Normals: each element from its own 64-bit output (fields + Box-Muller), generated per
    # chip in aligned chunks, so a chip's numbers never depend on its block or on where a
    # requested range starts (SIMD and scalar code paths never split a chip differently).

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal numbers, shape ``(C, *shape)``."""
        return self.normal_range(0, math.prod(shape), dtype).reshape(self.n, *shape)

    def normal_range(self, start: int, count: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
        """Elements ``start .. start+count-1`` of the flat normal sequence, ``(C, count)``:
        the same numbers as ``normal(start + count)[:, start:]``, without computing the
        prefix. ``scale``: their standard deviation (folded into the transform)."""
        if scale < 0:
            raise ValueError(f"scale must be >= 0, not {scale}")
        first = start // ALIGN * ALIGN
        total = aligned(start + count - first)
        if total <= CHUNK_ELEMENTS:  # one piece per chip: no copy
            z = _box_muller(*fields(self.keys, first, total), scale)
            return (z[:, start - first : start - first + count] if start != first or count != total else z).to(dtype)
        out = torch.empty(self.n, total, dtype=torch.float32, device=self.device)
        for c, sl in chunks(self.n, total):
            one = self.keys[c : c + 1]
            out[c : c + 1, sl] = _box_muller(*fields(one, first + sl.start, sl.stop - sl.start), scale)
        off = start - first
        z = out[:, off : off + count] if off or count != total else out
        return z.to(dtype)


def chip_stream(
    seed: int, population: str, chips: torch.Tensor | range | list[int], device: str | torch.device = "cpu"
) -> Stream:
    """The streams of chips ``chips`` of population ``population`` in a study with ``seed``.

    Chip ``c``'s key depends on ``(seed, population, c)`` alone (README, How it works).
    """
    base = mix64_int(mix64_int(seed ^ tag_hash("mcstudy.chip")) ^ tag_hash(population))
    idx = torch.as_tensor(list(chips) if isinstance(chips, range) else chips, dtype=torch.int64, device=device)
    return Stream(mix64(_signed(base) + (idx + 1) * _GOLDEN_S))


def fixed_stream(*tags: object, device: str | torch.device = "cpu") -> Stream:
    """A single stream keyed by tags only: for fixed design choices such as readout inputs."""
    return Stream(torch.tensor([_signed(mix64_int(tag_hash("mcstudy.fixed", *tags)))], device=device))


def draw_normal(rng: Stream, like: torch.Tensor, tag: str, scale: float = 1.0) -> torch.Tensor:
    """Normals of standard deviation ``scale`` shaped like ``like`` (leading chip
    dimension) from the chips' streams, sub-stream ``tag``."""
    if like.shape[0] != rng.n:
        raise ValueError(f"tensor has {like.shape[0]} chips, stream has {rng.n}")
    return rng.child(tag).normal_range(0, math.prod(like.shape[1:]), like.dtype, scale).reshape(like.shape)
