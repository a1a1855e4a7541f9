"""Finding a programming strategy (Mackin et al., Nat. Commun. 2022) without inference.

The objective of a strategy: weights sampled from the network's own weight distribution
(normalised per crossbar tile, as programming does) are mapped to four target
conductances, programmed through the population's device model (programming noise,
drift exponents), read at every time of interest (drift, read noise), decoded, scaled by
global drift compensation (α = Σ|ŵ(t_ref)| / Σ|ŵ(t)|, the weight-level form of the
readout ratio, with a reference read at ``reference_time``), and compared with the
targets: the normalised squared error ``Σ(αŵ − w)² / Σw²`` at each time, averaged over
the times. Every random number comes from a fixed counter-based stream, so the objective
is a deterministic function of the strategy (common random numbers for all strategies).

The search is scipy's differential evolution over :meth:`Strategy.from_vector`'s space,
started from a population that contains the naive strategy (so it can only improve on
it) and a few hand-designed splits (:func:`seed_vectors`), stopping at ``tol`` or
``maxiter``; ``workers > 1`` evaluates candidates in
parallel processes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..hardware.base import DeviceModel
from ..hardware.chip import tile_scales
from ..hardware.mapping import Encoding
from ..hardware.tiles import TileGrid, TileSpec
from ..rng import fixed_stream
from ..hardware.strategy import Strategy, StrategyMapping  # noqa: F401  (StrategyMapping re-exported)
from ..vocabulary import REFERENCE_TIME_S


def sample_weights(
    weights: list[torch.Tensor], granules: list[int], tile: TileSpec, n: int, seed: int,
    scale: str = "tile", ranges: list[float] | None = None,
) -> np.ndarray:  # fmt: skip
    """``n`` normalised weights ``w / w_max`` drawn uniformly from all analog layers' weights,
    with a fixed seed; ``w_max`` as programming takes it (``scale``: the resolved weight
    scale, ``trained`` with the trainer's ``ranges``, ``layer`` or ``tile``)."""
    pooled = []
    for i, (w, granule) in enumerate(zip(weights, granules)):
        w = w.detach().to(torch.float64).cpu()
        grid = TileGrid.build(w.shape[0], w.shape[1], tile, granule)
        full = tile_scales(scale, w, grid, None if ranges is None else ranges[i])
        w_max = grid.per_weight(full).clamp(min=torch.finfo(torch.float64).tiny)
        pooled.append((w / w_max).reshape(-1))
    u = torch.cat(pooled).numpy()
    rng = np.random.default_rng(seed)
    return u[rng.integers(0, u.size, size=n)] if u.size > n else u


@dataclass
class ProgrammingObjective:
    """Weight error of a strategy on one device model (picklable: scipy's workers call it)."""

    device: DeviceModel
    encoding: Encoding
    weights: np.ndarray  # normalised target weights in [-1, 1]
    times: tuple[float, ...]
    n_knots: int = 5
    seed: int = 0
    reference_time: float = REFERENCE_TIME_S

    def errors(self, strategy: Strategy) -> np.ndarray:
        """Normalised squared weight error after global drift compensation at each time."""
        mapping = StrategyMapping(strategy, self.encoding)
        g_max = self.device.g_max
        w = torch.from_numpy(np.asarray(self.weights, dtype=np.float32)).view(1, -1)
        w_max = torch.ones_like(w)
        targets, coeff = mapping.targets(w, w_max, g_max)
        stream = fixed_stream("programming.objective", self.seed)
        with torch.no_grad():
            state = self.device.program(targets.unsqueeze(0), stream.child("program"))

            def read(t: float, tag: str) -> torch.Tensor:
                g = self.device.read(state, t, stream.child(tag, float(t)))
                return mapping.decode(g, coeff, w_max, g_max)[0, 0].to(torch.float64)

            ref = read(self.reference_time, "reference").abs().sum()
            target = w[0].to(torch.float64)
            norm = (target**2).sum()
            out = []
            for t in self.times:
                wt = read(t, "read")
                alpha = ref / wt.abs().sum().clamp(min=torch.finfo(torch.float64).tiny)
                out.append(float(((alpha * wt - target) ** 2).sum() / norm))
        return np.asarray(out)

    def __call__(self, x: np.ndarray) -> float:
        return float(self.errors(Strategy.from_vector(x, self.n_knots)).mean())

    def key(self) -> str:
        """A hash of everything the objective depends on (for the strategy cache)."""
        text = json.dumps(
            {
                "device": type(self.device).__name__, "device_params": self.device.params.model_dump(mode="json"),
                "encoding": self.encoding.model_dump(mode="json"), "times": list(self.times), "knots": self.n_knots,
                "seed": self.seed, "reference_time": self.reference_time,
                "weights": hashlib.sha256(np.ascontiguousarray(self.weights, dtype=np.float32).tobytes()).hexdigest(),
            },
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()


def naive_vector(n_knots: int) -> np.ndarray:
    """The search vector of the naive strategy (G⁺ = u, nothing else, F = 1, s = ½)."""
    k = np.linspace(0.0, 1.0, n_knots)
    return np.concatenate([k, np.zeros(n_knots), np.zeros(n_knots), [1.0, 0.5]])


def seed_vectors(n_knots: int) -> list[np.ndarray]:
    """Structured starting points put in the search's first population: the naive split;
    both pairs carrying the weight equally at full range (F = 1, averaging two pairs'
    noise); and most-significant-pair-first splits with F = 2 and 3 (Mackin et al.'s
    hand-designed multi-pair programming)."""
    k = np.linspace(0.0, 1.0, n_knots)
    zeros = np.zeros(n_knots)
    out = [naive_vector(n_knots), np.concatenate([k, zeros, zeros, [1.0, 1.0]])]
    for f in (2.0, 3.0):
        out.append(np.concatenate([np.minimum((f + 1) * k / f, 1.0), zeros, zeros, [f, 1.0]]))
    return out


@dataclass(frozen=True)
class SearchResult:
    strategy: Strategy
    objective: float
    naive_objective: float
    errors: list[float]  # per time, the optimised strategy
    naive_errors: list[float]
    evaluations: int
    iterations: int
    converged: bool

    def save(self, path: Any, **extra: Any) -> None:
        """The strategy as JSON, with what the search reached (and ``extra``)."""
        self.strategy.save(
            path, objective=self.objective, naive_objective=self.naive_objective, errors=self.errors,
            naive_errors=self.naive_errors, evaluations=self.evaluations, iterations=self.iterations,
            converged=self.converged, **extra,
        )  # fmt: skip


def optimize_strategy(
    objective: ProgrammingObjective,
    maxiter: int = 60,
    popsize: int = 12,
    tol: float = 1e-3,
    workers: int = 1,
    seed: int = 0,
) -> SearchResult:
    """Differential evolution from a Latin-hypercube population that includes the naive strategy."""
    from scipy.optimize import differential_evolution  # here: scipy.optimize takes ~0.6 s to import

    n = objective.n_knots
    bounds = Strategy.bounds(n)
    dim = len(bounds)
    rng = np.random.default_rng(seed)
    size = max(5, popsize * dim)
    lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    cut = (np.arange(size)[:, None] + rng.random((size, dim))) / size  # Latin hypercube
    init = lo + (hi - lo) * np.take_along_axis(cut, rng.permuted(np.tile(np.arange(size)[:, None], (1, dim)), axis=0), axis=0)
    seeds = seed_vectors(n)[:size]
    init[: len(seeds)] = seeds
    if workers > 1:
        # spawned, not forked: a forked child of a process that has run torch's thread
        # pool can deadlock; each evaluation is single-threaded anyway
        with mp.get_context("spawn").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            res = differential_evolution(
                objective, bounds, maxiter=maxiter, tol=tol, seed=seed, init=init, polish=False,
                workers=pool.map, updating="deferred",
            )  # fmt: skip
    else:
        res = differential_evolution(objective, bounds, maxiter=maxiter, tol=tol, seed=seed, init=init, polish=False)
    naive = Strategy.naive()
    strategy = Strategy.from_vector(res.x, n)
    errors, naive_errors = objective.errors(strategy), objective.errors(naive)
    if naive_errors.mean() <= errors.mean():  # never worse than the baseline
        strategy, errors = naive, naive_errors
    return SearchResult(
        strategy, float(errors.mean()), float(naive_errors.mean()), errors.tolist(), naive_errors.tolist(),
        int(res.nfev), int(res.nit), bool(res.success),
    )  # fmt: skip
