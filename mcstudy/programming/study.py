"""A study's populations as physics: :func:`build_population` (with the programming
strategy the study names), and the strategies of populations with ``programming:
optimize``: one per variant (each network has its own weight distribution), searched
once and cached by hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

from ..analog import AnalogNetwork
from ..hardware.mapping import Encoding
from ..spec import PopulationSpec
from .optimize import ProgrammingObjective, SearchResult, optimize_strategy, sample_weights
from ..hardware import Population
from ..hardware.strategy import Strategy, StrategyMapping


def build_population(population: PopulationSpec, strategy: Strategy | None = None) -> Population:
    """``population``'s physics; ``strategy`` (or the one the study names: a file,
    ``naive`` or ``equal``) programs its multi-pair weights."""
    pop = Population.build(
        population.device.name, population.device.params, population.mapping.name, population.mapping.params,
        population.variation, population.tile, population.periphery, population.read_noise, population.weight_scale,
    )  # fmt: skip
    named = {"naive": Strategy.naive, "equal": Strategy.equal}
    preset = named.get(population.programming.strategy) if population.programming else None
    chosen = strategy or population.strategy or (preset() if preset else None)
    if chosen is None:
        return pop
    return dataclasses.replace(pop, mapping=StrategyMapping(chosen, population.mapping.params))  # type: ignore[arg-type]


def objective_for(
    net: AnalogNetwork, population: PopulationSpec, times: tuple[float, ...], ranges: list[float] | None = None
) -> ProgrammingObjective:
    """The weight-error objective of ``net`` on ``population``'s devices at ``times``, its
    weights normalised as programming normalises them (``ranges``: the trainer's, if any)."""
    prog = population.programming
    assert prog is not None
    built = build_population(population)
    scale = built.scale_used(ranges is not None)
    u = sample_weights(net.nominal, net.granules, population.tile, prog.samples, prog.seed, scale, ranges)
    # the encoding the chips are programmed with: the study's, with the device's off state where it sets none
    deployed = built.mapping.params.model_dump()
    encoding = Encoding.model_validate({k: v for k, v in deployed.items() if k in Encoding.model_fields})
    return ProgrammingObjective(built.device, encoding, u, times, prog.knots, prog.seed)


SEARCH_CODE_VERSION = 2  # bump when the objective or the search changes its numbers


def search_key(objective: ProgrammingObjective, population: PopulationSpec) -> str:
    prog = population.programming
    assert prog is not None
    search = {"maxiter": prog.maxiter, "popsize": prog.popsize, "tol": prog.tol, "seed": prog.seed, "code": SEARCH_CODE_VERSION}
    return hashlib.sha256(json.dumps([objective.key(), search], sort_keys=True).encode()).hexdigest()[:32]


def strategy_for(
    net: AnalogNetwork, population: PopulationSpec, times: tuple[float, ...], cache_root: Path, ranges: list[float] | None = None
) -> tuple[SearchResult, bool]:
    """The optimised strategy for ``net`` on ``population`` (from the cache if searched
    before); returns it and whether it came from the cache."""
    prog = population.programming
    assert prog is not None
    objective = objective_for(net, population, times, ranges)
    path = Path(cache_root) / "programming" / f"{search_key(objective, population)}.json"
    if path.exists():
        raw = json.loads(path.read_text(encoding="utf-8"))
        strategy = Strategy.load(path)
        return SearchResult(strategy, raw["objective"], raw["naive_objective"], raw["errors"], raw["naive_errors"], raw["evaluations"], raw["iterations"], raw["converged"]), True
    result = optimize_strategy(objective, prog.maxiter, prog.popsize, prog.tol, prog.workers, prog.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    result.save(tmp, times=list(times))
    tmp.replace(path)
    return result, False


def study_strategies(
    populations: list[PopulationSpec],
    networks: dict[str, AnalogNetwork],
    times: tuple[float, ...],
    cache_root: Path,
    log: Callable[[str], None] = lambda _: None,
    ranges: dict[str, list[float] | None] | None = None,
) -> dict[str, dict[str, Strategy]]:
    """``{hardware: {variant: strategy}}`` for every population with ``programming: optimize``
    (``ranges``: each variant's trained weight ranges, in layer order, where it has them)."""
    out: dict[str, dict[str, Strategy]] = {}
    for pop in populations:
        if pop.programming is None or pop.programming.strategy != "optimize":
            continue
        for variant, net in networks.items():
            result, cached = strategy_for(net, pop, times, cache_root, (ranges or {}).get(variant))
            out.setdefault(pop.name, {})[variant] = result.strategy
            how = "from cache" if cached else f"searched ({result.evaluations} evaluations)"
            log(
                f"  programming for {variant} on {pop.name}: weight error {result.naive_objective:.4f} (naive) -> "
                f"{result.objective:.4f} (F = {result.strategy.significance:.2f}, scale = {result.strategy.scale:.2f}), {how}"
            )
    return out
