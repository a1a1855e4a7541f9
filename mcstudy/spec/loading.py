"""Reading a study file: decoding, safe YAML with bounded alias expansion, duplicate keys, and validation of the whole file at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..data import DATASETS, DataSpec
from ..errors import McStudyError, SpecError
from ..models import MODELS
from ..registries import LOSSES, PROCEDURES, SCORES, TRAINERS
from ..registry import FileParamError
from ..times import format_time
from .limits import MAX_FILE_BYTES, MAX_POPULATIONS, MAX_PROCEDURES, MAX_RESULTS, MAX_VARIANTS, MAX_YAML_NODES
from .problems import _pydantic_problems
from .schema import Component, ProcedureSpec, StudySpec, VariantSpec, _StudyFile
from .sweeps import _named_factory, _resolved, _component, _expand_hardware, _expand_named, _named, _population_value, _sweep_coords, _trainer_value, _variant_models
from ..location import pin_problem, study_relative


def load_study(path: str | Path, chips: int | None = None, seed: int | None = None) -> StudySpec:
    """Read and validate a study file. ``chips`` and ``seed`` override the file's."""
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise SpecError([("", "not a regular file (a device, pipe or socket); a study is a YAML file")], str(p))
    try:
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            raise SpecError([("", f"the file is {p.stat().st_size:,} bytes; a study file may have at most {MAX_FILE_BYTES:,}")], str(p))
        data = p.read_bytes()
    except OSError as e:
        raise SpecError([("", f"cannot read the file: {e.strerror or e}")], str(p)) from None
    return parse_study(decode_text(data, str(p)), source=str(p), base_dir=p.parent, chips=chips, seed=seed)


def decode_text(data: bytes, source: str) -> str:
    """A study file's text: UTF-8 (with or without a byte-order mark), or UTF-16/32 with
    one; anything else is refused with the offending byte's position."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):  # fmt: skip
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as e:
                raise SpecError([("", f"not valid {codec.upper()} text (byte {e.start}): save the file as UTF-8")], source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecError(
            [("", f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (offset {e.start}); save the file as UTF-8")], source
        ) from None
    if "\x00" in text:
        raise SpecError([("", "the file holds NUL characters: not a text file (or UTF-16 without a byte-order mark); save it as UTF-8")], source)
    return text


def parse_study(
    text: str, source: str = "<string>", base_dir: Path | None = None, chips: int | None = None, seed: int | None = None
) -> StudySpec:
    """Validate study-file text (see :func:`load_study`)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise SpecError([("", f"the study text has more than {MAX_FILE_BYTES:,} bytes")], source)
    raw = _read_yaml(text, source)
    if chips is not None:
        raw["chips"] = chips
    if seed is not None:
        raw["seed"] = seed
    problems: list[tuple[str, str]] = []
    try:
        top = _StudyFile.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_problems(e, _StudyFile), source) from None

    data = _check_data(top.data, base_dir, problems)
    model = _component(_named_factory(top.model), MODELS, "model", "name", problems)
    model = model and _resolved(model, "model", base_dir, problems)
    own_models, variant_entries = _variant_models(top.variants, problems)
    own_models = {n: _resolved(c, f"variants.{n}.model", base_dir, problems) for n, c in own_models.items()}
    variants = _expand_named(variant_entries, "variants", "trainer", TRAINERS, problems)
    variants = [(n, _resolved(c, f"variants.{n.split('[')[0]}", base_dir, problems), s) for n, c, s in variants]
    hardware = _expand_hardware(top.hardware, problems, base_dir)
    procedures = [
        ProcedureSpec(name, comp)
        for name, comp in _named(top.procedures, "procedures", "kind", PROCEDURES, problems).items()
    ]
    loss = _component(top.loss, LOSSES, "loss", "kind", problems)
    metric = _component(top.metric, SCORES, "metric", "kind", problems)
    if loss is not None and metric is not None:
        _check_objective(loss, metric, procedures, [(n.split("[")[0], c) for n, c, _ in variants], problems)
    if loss is not None:
        data = _data_targets(data, "targets" in top.data.model_fields_set, loss, problems)
    bases = {h.base for h in hardware}
    for h in hardware:
        if h.chips_of is not None and (h.chips_of not in bases or h.chips_of == h.base):
            others = ", ".join(sorted(bases - {h.base})) or "no other population"
            problems.append((f"hardware.{h.base}.chips_of", f"must name another hardware population; got {h.chips_of!r}; have {others}"))
    without = {n.split("[")[0]: c.name for n, c, _ in variants if not TRAINERS.get(c.name).obj.has_ranges()}
    for base in sorted({h.base for h in hardware if h.weight_scale == "trained"} if without else ()):
        listed = ", ".join(f"variant {v!r} uses {t!r}" for v, t in without.items())
        problems.append((f"hardware.{base}.weight_scale", f"'trained' needs weight ranges from every variant's trainer, but {listed}, without; use auto, layer or tile"))
    times = tuple(sorted(top.times))
    if len(set(times)) != len(times):
        problems.append(("times", f"duplicate times; got {[format_time(t) for t in top.times]}"))
    for p in procedures:  # a procedure's own reads must fit the study's times (a tuning read before programming)
        try:
            PROCEDURES.get(p.kind.name).obj(p.kind.params).read_times(times)
        except McStudyError as e:
            problems.append((f"procedures.{p.name}", str(e)))
    for section, n, limit in (("variants", len(variants), MAX_VARIANTS), ("hardware", len(hardware), MAX_POPULATIONS), ("procedures", len(procedures), MAX_PROCEDURES)):
        if n > limit:
            problems.append((section, f"{n:,} entries after expanding sweeps; a study may have at most {limit:,}"))
    results = len(variants) * len(hardware) * len(procedures) * len(times) * top.chips
    if results > MAX_RESULTS:
        problems.append(("chips", f"{len(variants)} variants × {len(hardware)} populations × {len(procedures)} procedures × {len(times)} times × {top.chips:,} chips = {results:,} results per metric; at most {MAX_RESULTS:,}"))
    if problems:
        raise SpecError(problems, source)
    assert model is not None
    return StudySpec(
        name=top.name,
        description=top.description,
        seed=top.seed,
        chips=top.chips,
        times=times,
        data=data,
        model=model,
        variants=tuple(VariantSpec(n, c, s, own_models.get(n.split("[")[0])) for n, c, s in variants),
        hardware=tuple(hardware),
        procedures=tuple(procedures),
        execution=top.execution,
        analysis=top.analysis,
        loss=loss,  # type: ignore[arg-type]
        metric=metric,  # type: ignore[arg-type]
        source_text=text,
        source_path=source,
        variant_coords=_sweep_coords([(n, c.params, s) for n, c, s in variants], _trainer_value),
        hardware_coords=_sweep_coords([(h.name, h, h.sweep) for h in hardware], _population_value),
    )


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([("", f"not valid YAML: {e}")], source) from None
    except RecursionError:
        raise SpecError([("", "the YAML is nested too deeply")], source) from None
    size = _expanded_size(node, {})
    if size > MAX_YAML_NODES:
        raise SpecError([("", f"the YAML expands to {size:,} nodes through its aliases (*name); at most {MAX_YAML_NODES:,}")], source)
    dups: list[tuple[str, str]] = []
    _find_duplicate_keys(node, (), dups)
    if dups:
        raise SpecError(dups, source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:  # e.g. a python/object tag: the safe loader refuses it
        raise SpecError([("", f"not valid YAML for a study file: {e}")], source) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"the file must hold a mapping of study fields; got {type(raw).__name__}")], source)
    return _tuples(raw)


def _expanded_size(node: yaml.Node | None, memo: dict[int, int]) -> int:
    """Nodes of the document once every alias is expanded, counted without expanding
    (each node once; an alias re-uses its anchor's count), saturating past the limit."""
    if node is None:
        return 0
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_YAML_NODES + 1  # a node that contains itself expands for ever
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [n for kv in node.value for n in kv]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        total = min(total + _expanded_size(child, memo), MAX_YAML_NODES + 1)
    memo[key] = total
    return total


def _find_duplicate_keys(node: yaml.Node | None, path: tuple[str, ...], out: list[tuple[str, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                out.append((".".join(path + (key,)), f"duplicate key (line {k.start_mark.line + 1}): names must be unique"))
            seen.add(key)
            _find_duplicate_keys(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _find_duplicate_keys(v, path + (str(i),), out)


def _tuples(x: Any) -> Any:
    """YAML lists -> tuples, so frozen models validate strictly."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


# -- error formatting ---------------------------------------------------------------


def _check_data(data: DataSpec, base_dir: Path | None, problems: list[tuple[str, str]]) -> DataSpec:
    if data.dataset not in DATASETS:
        problems.append(("data.dataset", DATASETS.unknown_message(data.dataset)))
        return data
    entry = DATASETS.get(data.dataset).obj
    if data.dataset == "arrays":
        return _check_arrays_file(data, base_dir, problems)
    if data.dataset == "factory":
        return _check_data_factory(data, base_dir, problems)
    if data.path is not None or data.sha256 is not None:
        problems.append(("data.path", f"only dataset 'arrays' reads a file of your own; dataset {data.dataset!r} takes no path"))
    if data.factory is not None:
        problems.append(("data.factory", f"only dataset 'factory' calls a function of your own; dataset {data.dataset!r} takes none"))
    if entry.needs_root:
        if data.root is None:
            problems.append(("data.root", f"dataset {data.dataset!r} reads local files: set data.root to their directory"))
            return data
        root = study_relative(data.root, base_dir)
        if not root.is_dir():
            problems.append(("data.root", f"not a directory; got {str(root)!r}"))
        return data.model_copy(update={"root": str(root)})
    return data


def _check_arrays_file(data: DataSpec, base_dir: Path | None, problems: list[tuple[str, str]]) -> DataSpec:
    """``data.path`` resolved against the study file's directory, present, within the
    size limit; its SHA-256 recorded (or checked, where the study pins one)."""
    from ..data.arrays import MAX_ARRAYS_BYTES
    from ..location import file_sha256

    if data.path is None:
        problems.append(("data.path", "dataset 'arrays' reads your .npz file: set data.path (relative to the study file)"))
        return data
    path = study_relative(data.path, base_dir)
    if not path.is_file():
        problems.append(("data.path", f"no such file; got {str(path)!r}"))
        return data
    if path.stat().st_size > MAX_ARRAYS_BYTES:
        problems.append(("data.path", f"{path} has {path.stat().st_size:,} bytes; a data file may have at most {MAX_ARRAYS_BYTES:,}"))
        return data
    digest = file_sha256(path)
    if problem := pin_problem(str(path), digest, data.sha256):
        problems.append(("data.sha256", problem))
    return data.model_copy(update={"path": str(path), "sha256": digest})



def _check_data_factory(data: DataSpec, base_dir: Path | None, problems: list[tuple[str, str]]) -> DataSpec:
    """``data.factory`` importable (beside the study file first), its module's SHA-256
    recorded (or checked, where the study pins one)."""
    from ..models.factory import FACTORY_PATTERN, FactoryParams

    if data.factory is None or not re.match(FACTORY_PATTERN, data.factory):
        problems.append(("data.factory", f"dataset 'factory' calls your function: set data.factory to 'package.module:function'; got {data.factory!r}"))
        return data
    try:
        resolved = FactoryParams(factory=data.factory, kwargs=dict(data.kwargs)).resolve(base_dir)
    except FileParamError as e:
        problems.append((f"data.{e.field}", str(e)))
        return data
    if problem := pin_problem(f"the module of {data.factory!r}", resolved.sha256, data.sha256):
        problems.append(("data.sha256", problem))
    return data.model_copy(update={"source_dir": resolved.source_dir, "sha256": resolved.sha256})


def _check_objective(
    loss: Component, metric: Component, procedures: list[ProcedureSpec], variants: list[tuple[str, Component]], problems: list[tuple[str, str]]
) -> None:
    """The metric scores what the loss trains for (class labels or regression targets), and
    every procedure can work with it."""
    classes = LOSSES.get(loss.name).obj.classification
    if SCORES.get(metric.name).obj.classification != classes:
        fits = [n for n in SCORES.names() if SCORES.get(n).obj.classification == classes]
        what = "class labels" if not classes else "regression targets"
        problems.append(("metric", f"{metric.name!r} scores {what}, but loss {loss.name!r} does not; with it use {', '.join(fits)}"))
    if not classes:
        for name, trainer in dict(variants).items():
            if TRAINERS.get(trainer.name).obj.needs_classes:
                problems.append((f"variants.{name}.trainer", f"{trainer.name!r} chooses by class accuracy; loss {loss.name!r} trains for regression targets"))
        for p in procedures:
            if PROCEDURES.get(p.kind.name).obj.needs_classes:
                problems.append((f"procedures.{p.name}", f"{p.kind.name!r} learns from class labels (cross-entropy); loss {loss.name!r} trains for regression targets"))


def _data_targets(data: DataSpec, given: bool, loss: Component, problems: list[tuple[str, str]]) -> DataSpec:
    """``data.targets`` filled in from the loss: class labels for cross-entropy, values for
    a regression loss (from a dataset that can hold them: arrays or factory)."""
    targets = "classes" if LOSSES.get(loss.name).obj.classification else "values"
    if given and data.targets != targets:
        problems.append(("data.targets", f"{data.targets!r}, but loss {loss.name!r} trains for {'class labels' if targets == 'classes' else 'regression targets'}"))
    elif targets == "values" and data.dataset in DATASETS and not DATASETS.get(data.dataset).obj.values:
        problems.append(("data.dataset", f"{data.dataset!r} holds class labels; loss {loss.name!r} needs regression targets: use dataset arrays or factory"))
    return data.model_copy(update={"targets": targets})
