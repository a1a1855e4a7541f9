"""The Python API: ``mcstudy.run`` does what ``mcstudy run`` does and returns the store.

    import mcstudy
    ds = mcstudy.run("studies/quickstart.yaml", chips=64)            # a study file
    ds = mcstudy.run({"name": "mine", "times": ["20s", "1d"], ...})  # a study as a dict
    ds["accuracy"].sel(variant="float", time=86400).median("chip")

The store is the same as the command line's (``results/NAME.zarr`` unless ``out`` is
given), so a notebook and ``mcstudy report`` read the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from .errors import McStudyError

if TYPE_CHECKING:
    import xarray as xr

    from .spec import StudySpec


def _callable_factories(study: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``study`` with every model factory given as a Python function named as
    ``"module:function"``, and the names of those defined in ``__main__`` (a notebook or
    script), which only this process can call."""
    out = dict(study)
    in_process: list[str] = []

    def named(model: Any, where: str) -> Any:
        if not (isinstance(model, Mapping) and callable(model.get("factory"))):
            return model
        fn = model["factory"]
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module is None or not qualname.isidentifier():
            raise McStudyError(f"{where}.factory: {fn!r} is not a module-level function; define it with def at the top level")
        if module == "__main__":
            in_process.append(f"{where}.factory")
        return {**model, "factory": f"{module}:{qualname}"}

    out["model"] = named(out.get("model"), "model")
    if isinstance(out.get("variants"), Mapping):
        out["variants"] = {n: ({**v, "model": named(v["model"], f"variants.{n}.model")} if isinstance(v, Mapping) and "model" in v else v) for n, v in out["variants"].items()}  # fmt: skip
    return out, in_process


def _spec(study: str | Path | Mapping[str, Any] | StudySpec, chips: int | None, seed: int | None, base_dir: Path | None) -> StudySpec:
    import yaml

    from .spec import StudySpec, load_study, parse_study

    if isinstance(study, (str, Path)):
        return load_study(study, chips=chips, seed=seed)
    if isinstance(study, Mapping):
        try:
            text = yaml.safe_dump(dict(study), sort_keys=False)
        except yaml.YAMLError as e:
            raise McStudyError(f"the study dict cannot be written as YAML (only plain values, lists and dicts): {e}") from None
        return parse_study(text, source="<study dict>", base_dir=base_dir or Path.cwd(), chips=chips, seed=seed)
    if isinstance(study, StudySpec):
        if chips is None and seed is None:
            return study
        source = study.source_path or "<study>"
        base = Path(study.source_path).parent if study.source_path else (base_dir or Path.cwd())
        return parse_study(study.source_text, source=source, base_dir=base, chips=chips, seed=seed)
    raise McStudyError(f"study must be a path, a dict or a StudySpec; got {type(study).__name__}")


def run(
    study: str | Path | Mapping[str, Any] | StudySpec,
    out: str | Path | None = None,
    *,
    chips: int | None = None,
    seed: int | None = None,
    executor: Literal["serial", "local", "ray"] | None = None,
    workers: int | None = None,
    block_size: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    repair: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    base_dir: str | Path | None = None,
) -> xr.Dataset:
    """Run (or resume) a study and return its results as an ``xarray.Dataset`` (lazy, on
    the zarr store). The keywords are the command line's options: ``chips`` and ``seed``
    override the study's, ``out`` defaults to ``results/NAME.zarr`` (``NAME-seedN.zarr``
    with ``seed``), ``progress`` shows the progress bars. A study given as a dict resolves
    relative paths (data files, strategies) against ``base_dir`` (default: the working
    directory). Bad input raises :class:`mcstudy.McStudyError` naming the field; nothing
    is written."""
    from .execution import RunOptions, run_study
    from .store import open_results

    if isinstance(study, Mapping):  # factories given as functions become "module:function"
        study, in_process = _callable_factories(study)
        chosen = executor or (study.get("execution") or {}).get("executor")
        if in_process and chosen not in (None, "serial"):
            raise McStudyError(
                f"{', '.join(in_process)}: a function defined in this notebook or script runs only in this process "
                f"(executor='serial'); the {chosen} executor's workers import the factory by name, so put it in a module "
                "they can import (a file beside the study, or an installed package)"
            )
        if in_process and chosen is None:
            executor = "serial"
    spec = _spec(study, chips, seed, Path(base_dir) if base_dir is not None else None)
    if out is None:
        out = Path("results") / (f"{spec.name}.zarr" if seed is None else f"{spec.name}-seed{spec.seed}.zarr")
    if str(out) == "":
        raise McStudyError("out is empty; give a path or a URL (or None: results/<study>.zarr)")
    options = RunOptions(
        out=out, executor=executor, workers=workers, block_size=block_size, address=address, overwrite=overwrite,
        repair=repair, cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=progress,
    )  # fmt: skip
    run_study(spec, options)
    return open_results(out)
