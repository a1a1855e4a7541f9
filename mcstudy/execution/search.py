"""The programming search for one population of a study, as ``mcstudy
optimize-programming`` runs it: the variant's network trained (or loaded from the cache)
exactly as a run trains it, then the search's objective on the population's devices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..analog import AnalogNetwork
from ..data import load_dataset
from ..errors import McStudyError
from ..programming import ProgrammingObjective
from ..programming.study import objective_for
from ..spec import PopulationSpec, ProgrammingSpec, StudySpec
from ..training import ModelCache, train_or_load


def study_objective(
    spec: StudySpec, source: str, population: str, variant: str | None, workers: int | None, cache_dir: Path | None
) -> tuple[ProgrammingObjective, PopulationSpec, str]:
    """The search objective of one multi-pair ``population`` of a study for one ``variant``
    (default: the first), its network trained or loaded from the cache as a run would;
    returns it with the population (its programming set to ``optimize``) and the variant's
    name. ``source`` names the study file in messages."""
    names = [h.name for h in spec.hardware]
    if population not in names:
        raise McStudyError(f"--population {population!r} is not a hardware population of {source}; have {', '.join(names)}")
    pop = spec.population(population)
    if pop.mapping.name != "multi_pair":
        raise McStudyError(f"--population {population!r} has mapping {pop.mapping.name!r}; a programming strategy needs 'multi_pair'")
    variants = [v.name for v in spec.variants]
    vname = variant or variants[0]
    if vname not in variants:
        raise McStudyError(f"--variant {vname!r} is not a variant of {source}; have {', '.join(variants)}")
    prog = pop.programming if pop.programming is not None and pop.programming.strategy == "optimize" else ProgrammingSpec()
    prog = prog.model_copy(update={"strategy": "optimize", **({"workers": workers} if workers else {})})
    pop = dataclasses.replace(pop, programming=prog, strategy=None)
    chosen = spec.variant(vname)
    data = load_dataset(spec.data, spec.seed)
    model = spec.model_of(chosen)
    trained = train_or_load(model.name, model.params, chosen.trainer.name, chosen.trainer.params, data, spec.seed, ModelCache(cache_dir), spec.loss.name)
    net = AnalogNetwork.from_state(model.name, trained.model_params or model.params, trained.state_dict, data.input_shape, data.n_classes)
    return objective_for(net, pop, spec.times, net.layer_ranges(trained.ranges)), pop, vname
