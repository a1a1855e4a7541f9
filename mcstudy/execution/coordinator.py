"""The coordinator: spec -> trained variants -> plan -> executor -> store -> summary.

Data flows one way. Nothing is written to the store until the spec is valid, the data
loaded and every variant trained; the coordinator is the store's only writer, holds
the store's lock for the whole run, and streams each finished unit into the store
(bounded in flight), so its memory does not grow with the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..analog import AnalogNetwork
from ..data import Dataset, load_dataset
from ..errors import McStudyError, SpecError
from ..interrupts import critical
from ..models.factory import FactoryParams
from ..spec import StudySpec
from ..store import Location, ResultStore, StoreLock
from ..registry import Params
from ..training import TRAINERS, ModelCache, TrainedModel, TrainJob, load_trained, save_trained
from .executors import EXECUTORS, Executor
from .plan import WorkUnit, make_plan
from .worker import Payload, WorkerContext


@dataclass(frozen=True)
class RunOptions:
    """How to run a study; command-line flags override the study's ``execution`` section."""

    out: Path | str
    executor: Literal["serial", "local", "ray"] | None = None
    workers: int | None = None
    block_size: int | None = None
    address: str | None = None
    overwrite: bool = False
    repair: bool = False  # recompute the damaged units of an existing store (mcstudy verify lists them)
    cache_dir: Path | None = None
    progress: bool = True


@dataclass
class RunReport:
    path: str
    resumed: bool
    units_total: int
    units_run: int
    seconds: float
    trained: dict[str, str] = field(default_factory=dict)  # variant -> "trained" | "cached"


def run_study(spec: StudySpec, options: RunOptions, console: Console | None = None) -> RunReport:
    """Run (or resume) a study and write its store. Returns what was done."""
    console = console or Console(stderr=True, quiet=not options.progress, markup=False, highlight=False)
    t_start = time.perf_counter()
    ex = spec.execution
    executor_name = options.executor or ex.executor
    block_size = options.block_size or ex.block_size
    if ex.device == "cuda" and not torch.cuda.is_available():
        raise McStudyError("execution.device is 'cuda' but torch sees no CUDA device")

    data = load_dataset(spec.data, spec.seed)
    if (why := spec.objective.metric.problem(data.n_classes)) is not None:
        raise SpecError([("metric", why)], spec.source_path or None)
    console.print(Text.assemble((spec.name, "bold"), f": {data.summary()}"))
    location = Location(options.out)
    location.check_writable(options.overwrite)
    cache = ModelCache(options.cache_dir)
    with StoreLock(location):
        resume = ResultStore.check(location, spec, options.overwrite, options.repair)  # refuse early, before any training
        workers = 1 if executor_name == "serial" else (options.workers or ex.workers)
        if executor_name == "local":
            workers = workers or _cpus()
        with EXECUTORS.get(executor_name).obj(workers, options.address or ex.address, module_sources(spec)) as executor:
            for note in executor.notes():
                console.print(f"  {note}", markup=False, highlight=False)
            states, arch, ranges, trained, trained_reports = _train(spec, data, executor, cache, console)
            payload = Payload.build(spec, states, data, arch, ranges=ranges)
            coordinator_ctx = WorkerContext(payload, device="cpu")
            if any(h.programming is not None and h.programming.strategy == "optimize" for h in spec.hardware):
                from ..programming.study import study_strategies

                with _status(console, "optimising weight programming"):
                    strategies = study_strategies(
                        list(spec.hardware), coordinator_ctx.networks, spec.times, cache.root,
                        lambda line: console.print(line, markup=False, highlight=False), coordinator_ctx.ranges,
                    )  # fmt: skip
                payload = dataclasses.replace(payload, strategies=strategies)
            problems = coordinator_ctx.problems()
            if problems:
                raise SpecError(problems, spec.source_path or None)
            float_metrics = coordinator_ctx.float_metrics()
            for name, m in float_metrics.items():
                if not math.isfinite(m["loss"]):
                    raise McStudyError(f"the trained network of variant {name!r} gives a non-finite loss on the test split (its outputs overflow); nothing was written")
            headline = spec.objective.headline
            for name, m in float_metrics.items():
                console.print(Text.assemble(f"  float {headline} of ", (name, "cyan"), f" (as its trainer computes it): {m[headline]:.4f}"))
            per_weight = {h.name: (h.mapping.name, coordinator_ctx.populations[h.name].mapping.devices_per_weight) for h in spec.hardware}
            _describe_networks(coordinator_ctx.networks, per_weight, console)
            draw_names = sorted({n for pop in coordinator_ctx.populations.values() for n in pop.draw_names()})
            models = {v.name: {"model": spec.model_of(v).name, **payload.model_params[v.name].model_dump(mode="json")} for v in spec.variants}
            extra = {"variant_models": json.dumps(models, sort_keys=True)}
            if any(trained_reports.values()):  # e.g. a search's candidates, with their device and ADC counts
                extra["training_reports"] = json.dumps(trained_reports, sort_keys=True, default=str)
            if payload.strategies:
                extra["programming_strategies"] = json.dumps(
                    {h: {v: s.to_dict() for v, s in per.items()} for h, per in payload.strategies.items()}, sort_keys=True
                )
            if resume is not None and not resume.damage.intact:
                console.print(f"  repairing {location}: {len(resume.damage.units)} damaged unit(s), {len(resume.damage.arrays)} damaged array(s)")
            store, resumed = ResultStore.open_or_create(location, spec, block_size, float_metrics, draw_names, options.overwrite, extra, resume)
            plan = make_plan(spec, store.block_size)
            todo = store.pending(plan)
            if resumed:
                console.print(f"  resuming {location}: {len(plan) - len(todo)} of {len(plan)} units already done")
            try:
                _compute(store, todo, executor, payload, console)
            except BaseException:
                store.abandon()  # an --overwrite that never wrote a unit leaves the old store as it was
                raise
    return RunReport(str(location), resumed, len(plan), len(todo), time.perf_counter() - t_start, trained)


def _compute(store: ResultStore, todo: list[WorkUnit], executor: Executor, payload: Payload, console: Console) -> None:
    """Run the pending units and write each as it finishes."""
    if not todo:
        return
    executor.start(payload)
    with _progress(console) as progress:
        task = progress.add_task(executor.describe(), total=sum(u.n_chips for u in todo))
        for result in executor.run(todo):
            with critical():  # a signal lands after the unit is written and marked done
                store.write(result)
            progress.advance(task, result.unit.n_chips)


def _status(console: Console, text: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on a terminal; nothing in a log or a pipe."""
    return console.status(text) if console.is_terminal else contextlib.nullcontext()


def _train(
    spec: StudySpec, data: Dataset, executor: Executor, cache: ModelCache, console: Console
) -> tuple[
    dict[str, dict[str, torch.Tensor]], dict[str, Params], dict[str, dict[str, float] | None], dict[str, str], dict[str, list[dict[str, Any]]]
]:
    """Every variant's weights, architecture, trained weight ranges, how it was obtained
    and its trainer's report: from the cache, or trained by the executor (in parallel
    where it can) and then cached."""
    jobs = {v.name: TrainJob(spec.model_of(v).name, spec.model_of(v).params, v.trainer.name, v.trainer.params, spec.seed, spec.loss.name) for v in spec.variants}
    done: dict[str, TrainedModel] = {}
    status: dict[str, str] = {}
    missing: list[str] = []
    for name, job in jobs.items():
        hit = load_trained(job, data, cache)
        if hit is None:
            missing.append(name)
        else:
            done[name], status[name] = hit, "cached"
            console.print(Text.assemble("  variant ", (name, "cyan"), f" ({job.trainer}): loaded from cache"))
    if missing:
        with _status(console, f"training {len(missing)} variant(s) on {executor.name}: {', '.join(missing)}"):
            results = executor.train([jobs[n] for n in missing], data)
        for name, result in zip(missing, results):
            bad = [k for k, v in result.state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                raise McStudyError(
                    f"the training of variant {name!r} diverged: {', '.join(bad[:3])} are not finite. Lower its lr "
                    "(or check its other parameters); nothing was cached or written"
                )
            save_trained(result, jobs[name], cache)
            done[name], status[name] = result, "trained"
            console.print(Text.assemble("  variant ", (name, "cyan"), f" ({jobs[name].trainer}): trained in {result.seconds:.1f} s"))
    for name, result in done.items():
        if result.report:
            console.print(report_table(name, result.report))
    states = {v.name: done[v.name].state_dict for v in spec.variants}
    arch = {v.name: done[v.name].model_params or spec.model_of(v).params for v in spec.variants}
    ranges = {v.name: done[v.name].ranges for v in spec.variants}
    reports = {v.name: done[v.name].report for v in spec.variants}
    for v in spec.variants:  # the store's weight_scale_used coordinate says so
        if (ranges[v.name] is not None) != TRAINERS.get(v.trainer.name).obj.has_ranges():
            raise McStudyError(f"the trained model of variant {v.name!r} does not match its trainer's weight ranges; clear the model cache ({cache.root})")
    return states, arch, ranges, status, reports


def report_table(variant: str, rows: list[dict[str, object]]) -> Table:
    """A trainer's report (e.g. the candidates of an architecture search) as a table."""
    table = Table(title=Text(f"variant {variant}: training report"))
    for key in rows[0]:
        table.add_column(str(key), justify="right")
    for row in rows:
        table.add_row(*(Text(f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row.values()))
    return table


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("chips"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.description]{task.description}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def module_sources(spec: StudySpec) -> tuple[str, ...]:
    """Directories of the study's own model modules (``model: {factory: ...}`` beside the
    study file, not an installed package), which every worker imports."""
    dirs = {p.local_dir() for v in spec.variants if isinstance(p := spec.model_of(v).params, FactoryParams)}
    return tuple(sorted(d for d in dirs if d))


def _describe_networks(networks: dict[str, AnalogNetwork], per_weight: dict[str, tuple[str, int]], console: Console) -> None:
    """Once per run: which layers run on the chips (crossbar rows × columns of weights),
    how many devices a chip of each population needs for them (``per_weight``: population
    -> its mapping and devices per weight), and which layers run digitally; networks that
    are alike are described once."""
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for name, net in networks.items():
        analog, digital = net.describe()
        seen.setdefault((tuple(analog), tuple(digital)), []).append(name)
    for (analog, digital), names in seen.items():
        weights = sum(int(w.numel()) for w in networks[names[0]].nominal)
        console.print(f"  on the chips ({', '.join(names)}): {', '.join(analog)} = {weights:,} weights", markup=False, highlight=False)
        kinds: dict[tuple[str, int], list[str]] = {}
        for pop, kind in per_weight.items():
            kinds.setdefault(kind, []).append(pop)
        devices = "; ".join(f"{weights * k:,} with {m} mapping ({k} per weight: {', '.join(pops)})" for (m, k), pops in kinds.items())
        console.print(f"  devices per chip: {devices}", markup=False, highlight=False)
        if digital:
            console.print(f"  digital (no analog form in mcstudy): {', '.join(digital)}", markup=False, highlight=False)
