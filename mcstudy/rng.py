"""Counter-based random streams: randomness is an argument, keyed by identity.

Every random number mcstudy draws for a chip is a pure function of
``(study seed, population, chip index, tag path, element index)``. Nothing depends on
which worker, block, executor or device (CPU or CUDA) produced it, nor on what was
drawn before: chip 17 is the same physical chip alone or inside a block of 64, in a
serial run or on a Ray cluster, and on every training variant (common random numbers).

The generator is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): element ``i`` of a
stream with 64-bit key ``k`` is ``mix64(k + (i + 1) * golden)``. Keys of sub-streams are
derived by hashing a tag into the parent key (``Stream.child``), as JAX's ``fold_in``
does. Normals use the Box-Muller transform on the two 32-bit halves of each 64-bit
output, so tails reach about 6.7 sigma.

The arithmetic is done on int64 torch tensors with two's-complement wrap-around and
logical right shifts emulated by masking; ``tests/test_rng.py`` checks it bit for bit
against a plain-integer reference.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

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


_ALIGN = 64


def _aligned(m: int) -> int:
    return -(-m // _ALIGN) * _ALIGN


def _box_muller(b: torch.Tensor) -> torch.Tensor:
    """Two standard normals from each 64-bit output: ``(..., m) -> (..., m, 2)`` float64."""
    u1 = (_srl(b, 32).to(torch.float64) + 0.5) * (2.0**-32)
    u2 = ((b & 0xFFFFFFFF).to(torch.float64) + 0.5) * (2.0**-32)
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1)


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

    # Normals: the transcendental functions of Box-Muller run on each chip's outputs padded
    # to a multiple of _ALIGN pairs, so SIMD and scalar code paths never split a chip
    # differently in a block than alone (see hardware/layout.py).

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal numbers, shape ``(C, *shape)`` (Box-Muller on 32-bit halves)."""
        n = math.prod(shape)
        z = _box_muller(self.bits(_aligned((n + 1) // 2))).reshape(self.n, -1)
        return z[:, :n].to(dtype).reshape(self.n, *shape)

    def normal_range(self, start: int, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Elements ``start .. start+count-1`` of the flat normal sequence, ``(C, count)``:
        the same numbers as ``normal(start + count)[:, start:]``, without computing the prefix."""
        first = (start // 2) // _ALIGN * _ALIGN  # aligned, so every element takes the same code path
        last = first + _aligned((start + count - 1) // 2 - first + 1) - 1
        counter = (torch.arange(first + 1, last + 2, dtype=torch.int64, device=self.device)) * _GOLDEN_S
        b = mix64(self.keys[:, None] + counter[None, :])
        z = _box_muller(b).reshape(self.n, -1)
        off = start - 2 * first
        return z[:, off : off + count].to(dtype)

    def normal_like(self, t: torch.Tensor) -> torch.Tensor:
        """Standard normals shaped like ``t`` (whose first dimension is the chip)."""
        if t.shape[0] != self.n:
            raise ValueError(f"tensor has {t.shape[0]} chips, stream has {self.n}")
        return self.normal(*t.shape[1:], dtype=t.dtype)


def chip_stream(
    seed: int, population: str, chips: torch.Tensor | range | list[int], device: str | torch.device = "cpu"
) -> Stream:
    """The streams of chips ``chips`` of population ``population`` in a study with ``seed``.

    Chip ``c``'s key depends on ``(seed, population, c)`` alone (DESIGN.md invariant).
    """
    base = mix64_int(mix64_int(seed ^ tag_hash("mcstudy.chip")) ^ tag_hash(population))
    idx = torch.as_tensor(list(chips) if isinstance(chips, range) else chips, dtype=torch.int64, device=device)
    return Stream(mix64(_signed(base) + (idx + 1) * _GOLDEN_S))


def fixed_stream(*tags: object, device: str | torch.device = "cpu") -> Stream:
    """A single stream keyed by tags only: for fixed design choices such as readout inputs."""
    return Stream(torch.tensor([_signed(mix64_int(tag_hash("mcstudy.fixed", *tags)))], device=device))


def draw_normal(rng: Stream | torch.Generator, like: torch.Tensor, tag: str) -> torch.Tensor:
    """Standard normals shaped like ``like`` from a chip stream (sub-stream ``tag``) or a
    ``torch.Generator`` (sequential draws), so the physics functions accept either."""
    if isinstance(rng, torch.Generator):
        return torch.randn(like.shape, generator=rng, dtype=like.dtype, device=like.device)
    return rng.child(tag).normal_like(like)
