"""A weight-programming strategy over two conductance pairs (Mackin et al., Nat. Commun. 2022).

A weight ``w`` with normalised magnitude ``u = |w| / w_max`` in [0, 1] is stored on four
devices, ``F·(G⁺ − G⁻) + (g⁺ − g⁻)``, all in units of G_max. A strategy is four
piecewise-linear functions of ``u`` through the same knots — the target conductances
of G⁺, G⁻, g⁺ and g⁻ — plus the significance factor F and the weight-to-conductance
scale ``s``; negative weights use the mirror image (the + and − devices swapped).

Exactness: the strategy always encodes ``F·(G⁺ − G⁻) + (g⁺ − g⁻) = s·(F + 1)·u``, so the
weight read back from ideal (noise-free) conductances is the target. It is built into
the parameterisation: G⁺, G⁻ and g⁻ are free at the knots and g⁺ follows; because all
four are piecewise linear through the same knots, g⁺ lies in [0, 1] everywhere exactly
when it does at the knots, and :meth:`Strategy.from_vector` moves G⁺, G⁻, g⁻ (in that
order) until it does. Every vector the search proposes is therefore a valid strategy.

The naive strategy is the plain differential pair (Mackin et al.'s baseline): G⁺ = u,
G⁻ = 0, F = 1, s = ½, and no second pair — its g⁺ and g⁻ are not part of the cell, so
their devices add no noise (:meth:`Strategy.coefficients`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import McStudyError
from .mapping import Encoding, Mapping

F_RANGE = (1.0, 8.0)
SCALE_RANGE = (0.1, 1.0)
FORMAT = "mcstudy.programming-strategy/1"


@dataclass(frozen=True)
class Strategy:
    """Target conductances (in units of G_max) of (G⁺, G⁻, g⁺, g⁻) at ``knots`` of |w| / w_max."""

    knots: tuple[float, ...]
    g_plus: tuple[float, ...]
    g_minus: tuple[float, ...]
    l_plus: tuple[float, ...]
    l_minus: tuple[float, ...]
    significance: float
    scale: float
    name: str = "custom"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise McStudyError("invalid programming strategy: " + "; ".join(problems))

    # -- validity -----------------------------------------------------------------------

    def problems(self) -> list[str]:
        out = []
        k = np.asarray(self.knots)
        if len(k) < 2 or k[0] != 0.0 or k[-1] != 1.0 or (np.diff(k) <= 0).any():
            out.append(f"knots must rise strictly from 0 to 1; got {list(self.knots)}")
        for name in ("g_plus", "g_minus", "l_plus", "l_minus"):
            v = np.asarray(getattr(self, name))
            if len(v) != len(k):
                out.append(f"{name} has {len(v)} values for {len(k)} knots")
            elif ((v < -1e-9) | (v > 1 + 1e-9)).any():
                out.append(f"{name} must lie in [0, 1] (units of G_max); got {v.tolist()}")
        if not F_RANGE[0] <= self.significance <= F_RANGE[1]:
            out.append(f"significance F must lie in {list(F_RANGE)}; got {self.significance}")
        if not SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]:
            out.append(f"scale must lie in {list(SCALE_RANGE)}; got {self.scale}")
        if not out:
            err = np.abs(self._encoded() - self.scale * (self.significance + 1) * k).max()
            if err > 1e-6:
                out.append(f"F·(G⁺ − G⁻) + (g⁺ − g⁻) must equal scale·(F + 1)·|w| at every knot (off by {err:.2g})")
        return out

    def _encoded(self) -> np.ndarray:
        f = self.significance
        gp, gm, lp, lm = (np.asarray(getattr(self, n)) for n in ("g_plus", "g_minus", "l_plus", "l_minus"))
        return f * (gp - gm) + (lp - lm)

    # -- use ----------------------------------------------------------------------------

    def coefficients(self) -> torch.Tensor:
        """Decoding coefficients ``c_d`` of (G⁺, G⁻, g⁺, g⁻): ``u = Σ c_d · G_d / G_max``. A
        pair the strategy never programs (both its functions 0 at every knot: the naive
        strategy's g⁺, g⁻) is not part of the cell: its coefficients are 0, so its devices'
        noise never reaches the weight, and the other pair still encodes ``u`` exactly."""
        f = self.significance
        msp = 0.0 if not any(self.g_plus) and not any(self.g_minus) else 1.0
        lsp = 0.0 if not any(self.l_plus) and not any(self.l_minus) else 1.0
        return torch.tensor([f * msp, -f * msp, lsp, -lsp], dtype=torch.float64) / (self.scale * (f + 1))

    def conductances(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised target conductances ``(4, *u.shape)`` in [0, 1] for normalised weights
        ``u`` in [−1, 1] (negative weights: the mirror image)."""
        a = u.abs().clamp(max=1.0)
        knots = torch.tensor(self.knots, dtype=u.dtype, device=u.device)
        idx = torch.searchsorted(knots, a.contiguous(), right=True).clamp(1, len(self.knots) - 1)
        x0, x1 = knots[idx - 1], knots[idx]
        frac = (a - x0) / (x1 - x0)

        def interp(values: tuple[float, ...]) -> torch.Tensor:
            v = torch.tensor(values, dtype=u.dtype, device=u.device)
            return (v[idx - 1] + frac * (v[idx] - v[idx - 1])).clamp(0.0, 1.0)

        gp, gm, lp, lm = interp(self.g_plus), interp(self.g_minus), interp(self.l_plus), interp(self.l_minus)
        neg = u < 0
        return torch.stack(
            (torch.where(neg, gm, gp), torch.where(neg, gp, gm), torch.where(neg, lm, lp), torch.where(neg, lp, lm))
        )

    def decode(self, g: torch.Tensor) -> torch.Tensor:
        """Normalised weights from normalised conductances ``(4, ...)`` (linear read-out)."""
        c = self.coefficients().to(g)
        return (c.view(-1, *([1] * (g.dim() - 1))) * g).sum(0)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def naive(cls) -> "Strategy":
        """The plain differential pair at full range: G⁺ = |w| / w_max, F = 1, no second pair
        (its devices are not read: :meth:`coefficients`)."""
        return cls((0.0, 1.0), (0.0, 1.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), 1.0, 0.5, "naive")

    @classmethod
    def equal(cls) -> "Strategy":
        """The best simple four-device split: both pairs carry the weight equally at full
        range, G⁺ = g⁺ = |w| / w_max, F = 1, s = 1 (averaging the two pairs' noise)."""
        return cls((0.0, 1.0), (0.0, 1.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.0), 1.0, 1.0, "equal")

    @staticmethod
    def n_parameters(n_knots: int) -> int:
        """Length of a search vector: G⁺, G⁻, g⁻ at every knot, then F and the scale."""
        return 3 * n_knots + 2

    @staticmethod
    def bounds(n_knots: int) -> list[tuple[float, float]]:
        return [(0.0, 1.0)] * (3 * n_knots) + [F_RANGE, SCALE_RANGE]

    @classmethod
    def from_vector(cls, x: np.ndarray, n_knots: int, name: str = "optimised") -> "Strategy":
        """The valid strategy a search vector stands for (see the module docstring)."""
        x = np.clip(np.asarray(x, dtype=np.float64), [b[0] for b in cls.bounds(n_knots)], [b[1] for b in cls.bounds(n_knots)])
        k = np.linspace(0.0, 1.0, n_knots)
        gp, gm, lm = (x[i * n_knots : (i + 1) * n_knots].copy() for i in range(3))
        f, s = float(x[-2]), float(x[-1])
        target = s * (f + 1) * k
        for j in range(n_knots):
            gp[j], gm[j], lm[j] = _repair(gp[j], gm[j], lm[j], target[j], f)
        lp_all = np.clip(target - f * (gp - gm) + lm, 0.0, 1.0)
        return cls(tuple(k.tolist()), tuple(gp.tolist()), tuple(gm.tolist()), tuple(lp_all.tolist()), tuple(lm.tolist()), f, s, name)

    # -- files ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write the strategy as JSON (``extra``: e.g. the objective it reached)."""
        Path(path).write_text(json.dumps({**self.to_dict(), **extra}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Strategy":
        p = Path(path)
        if p.exists() and not p.is_file():
            raise McStudyError(f"programming strategy file {p} is not a regular file")
        if p.is_file() and p.stat().st_size > 1 << 20:
            raise McStudyError(f"programming strategy file {p} has {p.stat().st_size:,} bytes; a strategy has at most 1 MiB")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise McStudyError(f"programming strategy file {p} does not exist") from None
        except (OSError, json.JSONDecodeError) as e:
            raise McStudyError(f"programming strategy file {p} is not readable JSON: {e}") from None
        return cls.from_dict(raw, str(p), p.stem)

    @classmethod
    def from_dict(cls, raw: Any, source: str, name: str = "strategy") -> "Strategy":
        """A strategy from its JSON form (:meth:`to_dict`; a file's or a store's
        ``programming_strategies`` entry), ``source`` naming it in errors."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise McStudyError(f"{source} is not an mcstudy programming strategy (expected format {FORMAT!r})")
        fields = ("knots", "g_plus", "g_minus", "l_plus", "l_minus")
        try:
            return cls(
                *(tuple(float(v) for v in raw[f]) for f in fields),
                float(raw["significance"]), float(raw["scale"]), str(raw.get("name", name)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise McStudyError(f"programming strategy {source} is missing or has a bad field: {e}") from None
        except McStudyError as e:
            raise McStudyError(f"{source}: {e}") from None


def _repair(gp: float, gm: float, lm: float, target: float, f: float) -> tuple[float, float, float]:
    """Move G⁺, then G⁻, then g⁻ (at one knot) just enough that g⁺ = target − F·(G⁺ − G⁻) + g⁻
    lies in [0, 1]. Always possible for target in [0, F + 1]: all the way, g⁺ would be
    target − F ≤ 1 (or target + F + 1 ≥ 0)."""
    lp = target - f * (gp - gm) + lm
    if lp > 1:
        d = lp - 1
        step = min(d / f, 1 - gp)
        gp, d = gp + step, d - step * f
        step = min(d / f, gm)
        gm, d = gm - step, d - step * f
        lm -= min(d, lm)
    elif lp < 0:
        d = -lp
        step = min(d / f, gp)
        gp, d = gp - step, d - step * f
        step = min(d / f, 1 - gm)
        gm, d = gm + step, d - step * f
        lm += min(d, 1 - lm)
    return gp, gm, lm


class StrategyMapping(Mapping):
    """The four-device mapping that programs weights with a :class:`Strategy`; the
    population's encoding (levels, on/off ratio, nonlinearity, asymmetry) still applies."""

    devices_per_weight = 4
    negative_side = (False, True, False, True)

    def __init__(self, strategy: Strategy, encoding: Encoding | None = None) -> None:
        enc = Encoding.model_validate({k: v for k, v in (encoding or Encoding()).model_dump().items() if k in Encoding.model_fields})
        super().__init__(enc)
        self.strategy = strategy

    def split(self, u: torch.Tensor, w: torch.Tensor, quantise: Any, coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return quantise(self.strategy.conductances(u)), self.strategy.coefficients().view(4, 1, 1)
