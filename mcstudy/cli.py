"""The ``mcstudy`` command: ``run``, ``validate``, ``report`` and ``export``.

A user's mistake (bad study file, missing data, unusable store, bad flag) prints a
message and exits with code 2; only a bug in mcstudy shows a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import McStudyError
from .interrupts import Interrupted, stopping_on_signals
from .location import inside_a_store, output_file
from .vocabulary import CELL_DIMS, RESULT_DIMS

EXIT_USER_ERROR = 2


def _whole_number(least: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``, described as ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1, "a positive whole number")
_nonnegative_int = _whole_number(0, "a whole number >= 0")


def _bounded_int(most: int) -> "Callable[[str], int]":
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"expected at most {most}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcstudy", description="Monte Carlo variability studies of neural networks on analog in-memory-computing chips."
    )
    parser.add_argument("--version", action="version", version=f"mcstudy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a study and write its zarr store")
    run.add_argument("study", type=Path, help="study file (YAML)")
    run.add_argument("--out", help="results store: a path or an fsspec URL (default: results/<study name>.zarr)")
    run.add_argument("--executor", choices=["serial", "local", "ray"], help="where units run (default: the study's, else local)")
    run.add_argument("--workers", type=_positive_int, help="worker processes (local) or actors (ray)")
    run.add_argument(
        "--address", help="Ray cluster for --executor ray: 'local' starts one here (default), 'auto' or HOST:PORT joins one"
    )
    run.add_argument("--chips", type=_positive_int, help="override the study's chip count")
    run.add_argument("--seed", type=_nonnegative_int, help="override the study's seed (training, data split, chips): a reproduction's other seeds")
    run.add_argument("--block-size", type=_positive_int, help="chips per work unit")
    mend = run.add_mutually_exclusive_group()
    mend.add_argument("--overwrite", action="store_true", help="replace a store written by a different study")
    mend.add_argument("--repair", action="store_true", help="recompute the damaged units of the store (see mcstudy verify)")
    run.add_argument("--cache-dir", type=Path, help="trained-model cache (default: $MCSTUDY_CACHE or ~/.cache/mcstudy)")
    run.add_argument("--quiet", action="store_true", help="no progress output; print only the summary table")

    val = sub.add_parser("validate", help="check a study file without running it")
    val.add_argument("study", type=Path, help="study file (YAML)")
    val.add_argument("--chips", type=_positive_int, help="override the study's chip count")
    val.add_argument("--seed", type=_nonnegative_int, help="override the study's seed")

    opt = sub.add_parser("optimize-programming", help="search a weight-programming strategy for a population (Mackin et al.)")
    opt.add_argument("study", type=Path, help="study file (YAML)")
    opt.add_argument("--population", required=True, help="a multi_pair hardware population of the study")
    opt.add_argument("--variant", help="whose trained network's weights to use (default: the first variant)")
    opt.add_argument("--out", type=Path, required=True, help="strategy file to write (JSON)")
    opt.add_argument("--workers", type=_bounded_int(64), help="processes evaluating candidates (default: the population's programming.workers)")
    opt.add_argument("--cache-dir", type=Path, help="trained-model cache (default: $MCSTUDY_CACHE or ~/.cache/mcstudy)")

    ben = sub.add_parser("bench", help="measure throughput against the float forward and a one-chip-at-a-time loop")
    ben.add_argument("--quick", action="store_true", help="shorter measurements and smaller studies")
    ben.add_argument("--json", type=Path, help="write the figures as JSON")
    ben.add_argument("--block-size", type=_bounded_int(4096), default=8, help="chips per block of the batched path (default 8: fastest on a CPU, see benchmarks/README.md)")

    rep = sub.add_parser("report", help="write an HTML report (figures, tables with confidence intervals, provenance) of a store")
    rep.add_argument("store", help="results store: a path or an fsspec URL")
    rep.add_argument("--out", type=Path, help="report directory (default: <store>-report beside a local store, else ./<study>-report)")
    rep.add_argument("--confidence", type=_fraction, default=0.95, help="confidence level of the intervals (default 0.95)")

    cmp_ = sub.add_parser("compare", help="paired differences between two variants, procedures or populations, chip by chip, with intervals")
    cmp_.add_argument("store", help="results store: a path or an fsspec URL")
    cmp_.add_argument("dim", choices=["variant", "procedure", "hardware"], help="what differs")
    cmp_.add_argument("a", help="the one compared")
    cmp_.add_argument("b", help="the one it is compared with")
    cmp_.add_argument("--metric", default=None, help="per-chip metric (default: the study's headline metric, accuracy unless it names another)")
    cmp_.add_argument("--confidence", type=_fraction, default=0.95, help="confidence level of the intervals (default 0.95)")
    cmp_.add_argument("--where", action="append", default=[], metavar="DIM=NAME", help="keep only these cells, e.g. --where hardware=pcm (repeatable)")

    lst = sub.add_parser("list", help="what a study can name: devices, mappings, trainers, procedures, models, datasets, executors and their parameters")
    lst.add_argument("kind", nargs="?", help="devices, mappings, trainers, procedures, models, datasets or executors")
    lst.add_argument("name", nargs="?", help="one entry: its parameters, types, defaults and descriptions")

    ver = sub.add_parser("verify", help="check a store: every array's metadata and every finished unit's checksummed chunks")
    ver.add_argument("store", help="results store: a path or an fsspec URL")

    exp = sub.add_parser("export", help="export a store's per-chip results")
    exp.add_argument("store", help="results store: a path or an fsspec URL")
    exp.add_argument("--parquet", type=Path, required=True, help="Parquet file to write: one row per variant, hardware, procedure, time and chip")
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def console(stderr: bool = False, quiet: bool = False) -> Console:
    """A terminal console, or for logs and pipes one that never wraps lines and is wide
    enough that the summary table is not cut. Never markup: every string mcstudy prints
    may hold a user's text (a path, a name), and "[/b]" in it must print as itself; style
    comes from ``Text`` objects and ``style=`` arguments only."""
    c = Console(stderr=stderr, quiet=quiet, markup=False, highlight=False)
    return c if c.is_terminal else Console(stderr=stderr, quiet=quiet, width=160, soft_wrap=True, markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # zarr's tasks on a damaged store: mcstudy reports the damage
    args = build_parser().parse_args(argv)
    out = console()
    err = console(stderr=True)
    with stopping_on_signals():
        return _main(args, out, err)


def _main(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        if args.command == "validate":
            return _validate(args, out)
        if args.command == "report":
            return _report(args, out)
        if args.command == "export":
            return _export(args, out)
        if args.command == "verify":
            return _verify(args, out)
        if args.command == "list":
            from .catalog import show

            show(out, args.kind, args.name)
            return 0
        if args.command == "compare":
            return _compare(args, out)
        if args.command == "bench":
            return _bench(args, out, err)
        if args.command == "optimize-programming":
            return _optimize_programming(args, out, err)
        return _run(args, out, err)
    except McStudyError as e:
        err.print(Text.assemble(("mcstudy: error: ", "bold red"), str(e)), soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        how = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
        code = e.exit_code if isinstance(e, Interrupted) else 130
        resume = "; every finished unit is in the store: rerun the same command to resume" if args.command == "run" else ""
        err.print(f"mcstudy: stopped by {how}{resume}")
        return code
    except MemoryError:
        err.print(Text.assemble(("mcstudy: error: ", "bold red"), "out of memory: the study asks for more than this machine has (fewer chips per --block-size, a smaller model or dataset)"))
        return EXIT_USER_ERROR
    except OSError as e:  # the operating system refused a file a user named (permissions, space, names)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        err.print(Text.assemble(("mcstudy: error: ", "bold red"), f"{where}{e.strerror or e}"), soft_wrap=True)
        return EXIT_USER_ERROR


def _validate(args: argparse.Namespace, out: Console) -> int:
    from .spec import load_study

    spec = load_study(args.study, chips=args.chips, seed=args.seed)
    n = len(spec.variants) * len(spec.hardware) * len(spec.procedures) * len(spec.times) * spec.chips
    out.print(
        f"{args.study}: valid study {spec.name} — {len(spec.variants)} variant(s) × "
        f"{len(spec.hardware)} population(s) × {len(spec.procedures)} procedure(s) × {len(spec.times)} time(s) × "
        f"{spec.chips} chips = {n:,} chip evaluations; spec hash {spec.hash[:12]}",
        highlight=False,
    )
    return 0


def _report(args: argparse.Namespace, out: Console) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from .analysis import write_report
    from .store import Location, open_results, require_whole

    require_whole(args.store)
    ds = open_results(args.store)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise McStudyError(f"--out {args.out} is a file; the report is a directory (index.html and figures/)")
    if args.out is not None and ((args.out / "zarr.json").exists() or inside_a_store(args.out / "index.html")):
        raise McStudyError(f"--out {args.out} is (or is inside) a results store; write the report elsewhere")
    target = args.out
    if target is None:
        if Location(args.store).url:
            target = Path(f"{ds.attrs.get('study_name', 'mcstudy')}-report")
        else:
            local = Path(args.store).resolve()
            target = local.with_name(local.name.removesuffix(".zarr") + "-report")
    with out.status("writing the report") if out.is_terminal else _nothing():
        page = write_report(ds, target, confidence=args.confidence)
    out.print(f"wrote {page} (open it in a browser)", highlight=False)
    return 0


def _export(args: argparse.Namespace, out: Console) -> int:
    from .analysis import export_parquet
    from .store import open_results, require_whole

    output_file(args.parquet, "--parquet")
    require_whole(args.store)
    rows = export_parquet(open_results(args.store), args.parquet)
    out.print(f"wrote {rows:,} rows to {args.parquet}", highlight=False)
    return 0


def _compare(args: argparse.Namespace, out: Console) -> int:
    """A paired comparison as a table; the intervals are over chips (the same chips in a and b)."""
    from .analysis import paired_table
    from .analysis.stats import headline
    from .store import open_results, require_whole

    require_whole(args.store)
    ds = open_results(args.store)
    args.metric = args.metric or headline(ds)
    metrics = [str(n) for n, v in ds.data_vars.items() if v.dims == RESULT_DIMS]
    if args.metric not in metrics:
        raise McStudyError(f"--metric {args.metric!r} is not a per-chip metric of {args.store}; have {', '.join(metrics)}")
    for cond in args.where:
        dim, sep, name = cond.partition("=")
        if not sep or dim not in ("variant", "procedure", "hardware") or dim == args.dim:
            raise McStudyError(f"--where {cond!r}: give DIM=NAME with DIM one of variant, procedure, hardware (not {args.dim})")
        if name not in [str(v) for v in ds[dim].values]:
            raise McStudyError(f"--where {cond!r}: no {dim} {name!r}; have {', '.join(map(str, ds[dim].values))}")
        ds = ds.sel({dim: [name]})
    df = paired_table(ds, args.dim, args.a, args.b, args.confidence, args.metric)
    units = df.attrs["units"]
    table = Table(title=f"{args.a} − {args.b} ({args.metric}, {units}; {int(args.confidence * 100)} % t-interval over the same chips)")
    cells = [c for c in CELL_DIMS if c in df.columns]
    for col in (*cells, "difference", "interval", "wins", "chips"):
        table.add_column(col, justify="left" if col in cells else "right")
    fmt = "+.2f" if units == "pp" else "+.3g"
    for row in df.to_dict("records"):
        table.add_row(
            *(str(row[c]) for c in cells), f"{row['difference']:{fmt}}", f"{row['lower']:{fmt}} … {row['upper']:{fmt}}",
            f"{100 * row['wins']:.0f} %", str(row["chips"]),
        )  # fmt: skip
    out.print(table)
    return 0


def _verify(args: argparse.Namespace, out: Console) -> int:
    """Exit 0 when the store is whole, 1 when it is damaged (2: not a store)."""
    from .store import Location, open_results, store_names
    from .verify import verify

    location = Location(args.store)
    if not location.exists():
        raise McStudyError(f"no results store at {args.store}")
    with out.status("verifying every finished unit") if out.is_terminal else _nothing():
        damage = verify(location)
    try:
        names = store_names(open_results(args.store, check=False))
    except McStudyError:  # a damaged coordinate: positions instead of names
        names = None
    if damage.intact:
        out.print(f"{args.store}: intact ({damage.units_checked} finished units checked: every chunk present, checksums match)")
        return 0
    out.print(Text.assemble((f"{args.store}: damaged", "bold red")))
    for line in damage.lines(names, most=200):
        out.print(f"  - {line}")
    fix = "recompute it with mcstudy run STUDY --out STORE --overwrite" if damage.fatal else "mcstudy run STUDY --out STORE --repair recomputes exactly these"
    out.print(fix)
    return 1


def _bench(args: argparse.Namespace, out: Console, err: Console) -> int:
    from . import bench

    if args.json is not None:
        output_file(args.json, "--json")
    result = bench.run(quick=args.quick, block=args.block_size, log=lambda line: err.print(line, highlight=False))
    for table in bench.tables(result):
        out.print(table)
    if args.json is not None:
        bench.to_json(result, args.json)
        out.print(f"wrote {args.json}", highlight=False)
    return 0


def _optimize_programming(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .programming import optimize_strategy
    from .execution.search import study_objective
    from .spec import format_time, load_study

    spec = load_study(args.study)
    output_file(args.out, "--out")
    objective, pop, vname = study_objective(spec, args.study, args.population, args.variant, args.workers, args.cache_dir)
    prog = pop.programming
    assert prog is not None
    with err.status(f"searching ({prog.maxiter} generations at most, {prog.workers} worker(s))") if err.is_terminal else _nothing():
        result = optimize_strategy(objective, prog.maxiter, prog.popsize, prog.tol, prog.workers, prog.seed)
    result.save(args.out, times=list(spec.times), study=spec.name, population=pop.name, variant=vname)
    table = Table(title=f"weight error after global drift compensation: {vname} on {pop.name}")
    for col in ("time", "naive", "optimised", "ratio"):
        table.add_column(col, justify="right")
    for t, a, b in zip(spec.times, result.naive_errors, result.errors):
        table.add_row(format_time(t), f"{a:.4f}", f"{b:.4f}", f"{b / a:.2f}")
    out.print(table)
    s = result.strategy
    out.print(
        f"wrote {args.out}: F = {s.significance:.3f}, scale = {s.scale:.3f}, {len(s.knots)} knots; "
        f"{result.evaluations} evaluations, {result.iterations} generations",
        highlight=False,
    )
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .analysis.stats import headline, lower_is_better
    from .analysis.summary import render_summary, summary_table
    from .execution import RunOptions, run_study
    from .spec import load_study
    from .store import open_results

    spec = load_study(args.study, chips=args.chips, seed=args.seed)
    default = f"{spec.name}.zarr" if args.seed is None else f"{spec.name}-seed{spec.seed}.zarr"
    if args.out == "":
        raise McStudyError("--out is empty; give a path or a URL (or leave --out out: results/<study>.zarr)")
    if args.cache_dir is not None and str(args.cache_dir) in ("", "."):
        raise McStudyError(f"--cache-dir {str(args.cache_dir)!r}: give the model cache its own directory")
    path = args.out or Path("results") / default
    options = RunOptions(
        out=path,
        executor=args.executor,
        workers=args.workers,
        block_size=args.block_size,
        address=args.address,
        overwrite=args.overwrite,
        repair=args.repair,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    report = run_study(spec, options, console=console(stderr=True, quiet=args.quiet))
    ds = open_results(path)
    metric = headline(ds)
    out.print(render_summary(summary_table(ds), ds.attrs.get("yield_within", 0.01), spec.name, metric, lower_is_better(ds[metric])))
    what = "resumed" if report.resumed else "wrote"
    out.print(
        f"{what} {path} ({report.units_run} of {report.units_total} units computed) in {report.seconds:.1f} s. "
        f"Open it with: mcstudy.open_results({str(path)!r})",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
