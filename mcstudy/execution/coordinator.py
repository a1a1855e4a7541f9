"""The coordinator: spec -> trained variants -> plan -> executor -> store -> summary.

Data flows one way. Nothing is written to the store until the spec is valid, the data
loaded and every variant trained; the coordinator is the store's only writer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data import load_dataset
from ..errors import McStudyError
from ..store import ResultStore
from ..spec import StudySpec
from ..training import ModelCache, train_or_load
from .executors import EXECUTORS
from .plan import make_plan
from .worker import Payload, WorkerContext


@dataclass(frozen=True)
class RunOptions:
    """How to run a study; command-line flags override the study's ``execution`` section."""

    out: Path
    executor: Literal["serial", "local"] | None = None
    workers: int | None = None
    block_size: int | None = None
    overwrite: bool = False
    cache_dir: Path | None = None
    progress: bool = True


@dataclass
class RunReport:
    path: Path
    resumed: bool
    units_total: int
    units_run: int
    seconds: float
    trained: dict[str, str] = field(default_factory=dict)  # variant -> "trained" | "cached"


def run_study(spec: StudySpec, options: RunOptions, console: Console | None = None) -> RunReport:
    """Run (or resume) a study and write its store. Returns what was done."""
    console = console or Console(stderr=True, quiet=not options.progress)
    t_start = time.perf_counter()
    ex = spec.execution
    executor_name = options.executor or ex.executor
    block_size = options.block_size or ex.block_size
    if ex.device == "cuda" and not torch.cuda.is_available():
        raise McStudyError("execution.device is 'cuda' but torch sees no CUDA device")

    data = load_dataset(spec.data, spec.seed)
    console.print(f"[bold]{spec.name}[/]: {data.summary()}")

    cache = ModelCache(options.cache_dir)
    states: dict[str, dict[str, torch.Tensor]] = {}
    trained: dict[str, str] = {}
    for v in spec.variants:
        with console.status(f"training variant {v.name} ({v.trainer.name})"):
            tm = train_or_load(spec.model.name, spec.model.params, v.trainer.name, v.trainer.params, data, spec.seed, cache)
        states[v.name] = tm.state_dict
        trained[v.name] = "cached" if tm.from_cache else "trained"
        how = "loaded from cache" if tm.from_cache else f"trained in {tm.seconds:.1f} s"
        console.print(f"  variant [cyan]{v.name}[/] ({v.trainer.name}): {how}")

    payload = Payload.build(spec, states, data)
    coordinator_ctx = WorkerContext(payload, device="cpu")
    float_metrics = coordinator_ctx.float_metrics()
    for name, m in float_metrics.items():
        console.print(f"  float accuracy of [cyan]{name}[/]: {m['accuracy']:.4f}")
    draw_names = sorted({n for pop in coordinator_ctx.populations.values() for n in pop.draw_names()})

    store, resumed = ResultStore.open_or_create(options.out, spec, block_size, float_metrics, draw_names, options.overwrite)
    plan = make_plan(spec, store.block_size)
    todo = store.pending(plan)
    if resumed:
        console.print(f"  resuming {options.out}: {len(plan) - len(todo)} of {len(plan)} units already done")
    n_workers = 1 if executor_name == "serial" else min(options.workers or ex.workers or _cpus(), max(len(todo), 1))

    if todo:
        with EXECUTORS.get(executor_name).obj(payload, n_workers) as executor, _progress(console) as progress:
            task = progress.add_task(f"{executor_name} × {n_workers}", total=sum(u.n_chips for u in todo))
            for result in executor.run(todo):
                store.write(result)
                progress.advance(task, result.unit.n_chips)
    return RunReport(Path(options.out), resumed, len(plan), len(todo), time.perf_counter() - t_start, trained)


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

