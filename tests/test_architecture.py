"""The package's shape: imports only point down the layers, ``import mcstudy`` is light,
every registered device and mapping passes the same contract, and another package adds
its own device through an entry point."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import torch

from mcstudy.hardware import DEVICES, MAPPINGS, Population, TileSpec, Variation
from mcstudy.registry import Registry
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams
from mcstudy.rng import chip_stream
from mcstudy.vocabulary import REFERENCE_TIME_S

PACKAGE = Path(__file__).resolve().parents[1] / "mcstudy"

# The layers, lowest first (README, "Layout"). A module may import from its own layer
# and the layers below it, never from one above.
LAYERS: list[set[str]] = [
    {"errors", "registry", "registries", "vocabulary", "times", "rng", "kernels", "location", "interrupts"},
    {"data", "models", "hardware", "objectives"},
    {"spec"},
    {"analog", "programming", "store", "verify"},
    {"training", "procedures", "analysis"},
    {"execution", "bench"},
    {"cli", "catalog", "api", "testing", "__main__", "__init__"},
]

# Imports that still run up the layers: the debt not yet paid. Each is (importer,
# imported); the test fails when one disappears, so the list only shrinks.
DEBT: set[tuple[str, str]] = set()


def _layer(top: str) -> int:
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"mcstudy.{top} is in no layer: add it to LAYERS (and to the README's layout)")


def _imports(path: Path) -> list[tuple[str, int]]:
    """The mcstudy modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks
    excluded), as top-level names under mcstudy, with line numbers."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package[-1] == "__init__":
        package = package[:-1]
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:
                    names = [".".join([*base, a.name]) for a in node.names]
            elif node.module:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            bits = n.split(".")
            if bits[0] == "mcstudy" and len(bits) > 1:
                module = (PACKAGE / bits[1]).is_dir() or (PACKAGE / f"{bits[1]}.py").is_file()
                out.append((bits[1] if module else "__init__", node.lineno))  # else: a name from mcstudy/__init__.py
    return out


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_imports_only_point_down_the_layers() -> None:
    upward: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _top(path)
        for target, line in _imports(path):
            if target == me:
                continue
            if _layer(target) > _layer(me):
                upward.setdefault((me, target), f"{path.relative_to(PACKAGE.parent)}:{line}")
    new = {k: v for k, v in upward.items() if k not in DEBT}
    assert not new, "imports that run up the layers (README, Layout):\n" + "\n".join(f"  {a} -> {b} at {w}" for (a, b), w in new.items())
    paid = DEBT - set(upward)
    assert not paid, f"no longer imported, remove from DEBT: {sorted(paid)}"


def test_no_import_cycles_between_modules() -> None:
    """Module-level run-time imports between mcstudy's modules form no cycle."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        me = ".".join(p for p in rel.parts if p != "__init__")
        deps = set()
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: imports inside functions are deferred on purpose
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = parts[: len(parts) - (node.level - 1)]
                if node.module:
                    deps.add(".".join([*base, node.module]))
                for a in node.names:  # "from . import x" may name a submodule
                    deps.add(".".join([*base, *([node.module] if node.module else []), a.name]))
        graph[me] = deps
    graph = {m: {d for d in ds if d in graph and d != m} for m, ds in graph.items()}
    # a package's __init__ importing its own submodules is how packages re-export: only
    # cycles that do not pass through a package's own __init__ count
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if d.startswith(m + "."):  # a package importing its submodule
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                if not any(cycle[i + 1].startswith(cycle[i] + ".") or cycle[i].startswith(cycle[i + 1] + ".") for i in range(len(cycle) - 1)):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_import_mcstudy_is_light() -> None:
    """``import mcstudy`` loads neither torch nor the store's stack nor any plugin."""
    code = "import sys, mcstudy; print(sorted(m for m in ('torch', 'xarray', 'zarr', 'pydantic', 'mcstudy.spec') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


# -- contracts every registered entry passes ---------------------------------------------


def _device(name: str):
    entry = DEVICES.get(name)
    return entry.obj(entry.params.model_validate(entry.obj.EXAMPLE))


def _mapping(name: str):
    entry = MAPPINGS.get(name)
    return entry.obj(entry.params())


def _weights() -> torch.Tensor:
    return torch.randn(12, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("name", DEVICES.names())
def test_every_device_keeps_chip_identity(name: str) -> None:
    """Chip 2 programmed and read in a block of three is the same chip programmed alone:
    every draw comes from the chip's own stream."""
    pop = Population(_device(name), _mapping("differential"), Variation(), TileSpec())
    w = _weights()
    block = pop.program([w], chip_stream(7, "contract", [0, 1, 2]))
    alone = pop.program([w], chip_stream(7, "contract", [2]))
    for t in (REFERENCE_TIME_S, 86400.0):
        a, b = block.read(t).layers[0].weight[2], alone.read(t).layers[0].weight[0]
        assert torch.equal(a, b), f"{name}: chip 2 differs in a block at t = {t} s"
    other = pop.program([w], chip_stream(8, "contract", [2]))
    if name != "ideal":
        assert not torch.equal(other.read(REFERENCE_TIME_S).layers[0].weight[0], alone.read(REFERENCE_TIME_S).layers[0].weight[0])


@pytest.mark.parametrize("name", MAPPINGS.names())
def test_every_mapping_round_trips_on_ideal_devices(name: str) -> None:
    """On ideal devices a mapping reads back the weights it was given (unipolar ones take
    weights of one sign)."""
    mapping = _mapping(name)
    w = _weights()
    if name.startswith("unipolar"):
        w = w.abs()
    pop = Population(_device("ideal"), mapping, Variation(), TileSpec())
    got = pop.program([w], chip_stream(0, "contract", [0])).read(REFERENCE_TIME_S).layers[0].weight[0]
    torch.testing.assert_close(got, w, rtol=1e-12, atol=1e-12)


def _registries() -> list[Registry]:
    from mcstudy import registries

    return [registries.DATASETS, registries.MODELS, registries.DEVICES, registries.MAPPINGS, registries.TRAINERS, registries.PROCEDURES, registries.EXECUTORS]


@pytest.mark.parametrize("registry", _registries(), ids=lambda r: r.kind)
def test_every_entry_refuses_an_unknown_parameter(registry: Registry) -> None:
    for name in registry.names():
        entry = registry.get(name)
        with pytest.raises(ValueError, match="no_such_parameter"):
            entry.params.model_validate({"no_such_parameter": 1.0})


# -- a device from another package, through an entry point -------------------------------

TOY = '''
"""A toy device for mcstudy's plugin test: Gaussian programming noise, nothing else."""
import torch
from pydantic import Field

from mcstudy.hardware import DEVICES
from mcstudy.hardware.base import DeviceModel
from mcstudy.registry import Params
from mcstudy.rng import draw_normal


class ToyParams(Params):
    g_max: float = Field(10.0, gt=0, description="largest conductance, uS")
    sigma: float = Field(0.05, ge=0, description="programming noise, a fraction of g_max")


@DEVICES.register("toy", ToyParams)
class ToyDevice(DeviceModel):
    """Gaussian programming noise of sigma * g_max; no drift, no read noise."""

    def program(self, g_target, rng):
        p = self.params
        return {"g": (g_target + draw_normal(rng, g_target, "program", p.sigma * p.g_max)).clamp(0.0, p.g_max)}

    def mean_and_sigma(self, state, t):
        return state["g"], None
'''

STUDY = """
name: toy_plugin
seed: 1
chips: 4
times: [20s, 1d]
model: {name: mlp, hidden: [16]}
variants:
  float: {trainer: standard, epochs: 2}
hardware:
  toy: {device: {name: toy, sigma: 0.1}, mapping: differential}
"""


def _plugin(root: Path, module: str, body: str, entry: str = "toy") -> dict[str, str]:
    """An installed distribution ``toy-plugin`` on a path of its own: a module and its
    dist-info with an entry point in ``mcstudy.devices`` (what ``pip install`` of a
    package with ``[project.entry-points."mcstudy.devices"]`` leaves behind)."""
    (root / f"{module}.py").write_text(body)
    info = root / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mcstudy.devices]\n{entry} = {module}\n")
    return {**os.environ, "PYTHONPATH": str(root)}


def test_a_device_from_another_package_runs_through_its_entry_point(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    env = _plugin(tmp_path / "site", "toy_device", textwrap.dedent(TOY))
    study = tmp_path / "toy.yaml"
    study.write_text(STUDY)
    out = tmp_path / "toy.zarr"
    r = subprocess.run(
        [sys.executable, "-m", "mcstudy", "run", str(study), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--executor", "local", "--workers", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    import mcstudy

    ds = mcstudy.open_results(out)
    assert list(ds["device"].values) == ["toy"]
    acc = ds["accuracy"].values
    assert acc.shape[-1] == 4 and (acc > 0).all()
    r = subprocess.run([sys.executable, "-m", "mcstudy", "list", "devices", "toy"], capture_output=True, text=True, env={**env, "COLUMNS": "200"}, cwd=tmp_path)
    assert r.returncode == 0 and "programming noise, a fraction of g_max" in r.stdout and "0.05" in r.stdout, r.stdout + r.stderr
    # the contract: the plugin's chips are the same in a block and alone, in the plugin's own process
    code = textwrap.dedent(
        """
        import sys, torch
        sys.path.insert(0, %r)
        import tests.test_architecture as t
        t.test_every_device_keeps_chip_identity("toy")
        print("ok")
        """
        % str(Path(__file__).resolve().parents[1])
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize(
    "module, body, message",
    [
        ("toy_broken", "import no_such_module_anywhere\n", "no_such_module_anywhere"),
        ("toy_empty", "VALUE = 1\n", "registered no device named 'toy'"),
    ],
)
def test_a_broken_plugin_is_a_message_naming_its_package(tmp_path: Path, module: str, body: str, message: str) -> None:
    """A plugin that fails to import, or that registers nothing under its entry point's
    name: exit 2 with a message naming the package, never a traceback."""
    (tmp_path / "site").mkdir()
    env = _plugin(tmp_path / "site", module, body)
    study = tmp_path / "toy.yaml"
    study.write_text(STUDY)
    r = subprocess.run([sys.executable, "-m", "mcstudy", "validate", str(study)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "toy-plugin" in r.stderr and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def _models_of(cls: type, seen: set[type]) -> list[type]:
    """``cls`` and every parameter model nested in its fields."""
    from pydantic import BaseModel

    out: list[type] = []
    if cls in seen:
        return out
    seen.add(cls)
    out.append(cls)
    for f in cls.model_fields.values():  # type: ignore[attr-defined]
        stack = [f.annotation]
        while stack:
            a = stack.pop()
            if isinstance(a, type) and issubclass(a, BaseModel):
                out += _models_of(a, seen)
            stack.extend(typing.get_args(a))
    return out


def test_every_parameter_a_study_can_set_is_described() -> None:
    """Every field of every registered entry's parameters (a plugin's included) and of
    the study file's own sections says what it is: the description is the user's manual."""
    from mcstudy import registries
    from mcstudy.spec.schema import _PopulationSections, _StudyFile

    seen: set[type] = set()
    models = [*_models_of(_StudyFile, seen), *_models_of(_PopulationSections, seen)]
    for registry in (registries.DATASETS, registries.MODELS, registries.DEVICES, registries.MAPPINGS, registries.TRAINERS, registries.PROCEDURES, registries.EXECUTORS):
        for name in registry.names():
            models += _models_of(registry.get(name).params, seen)
    missing = [f"{m.__module__}.{m.__qualname__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description]  # type: ignore[attr-defined]
    assert not missing, "parameters without a description:\n  " + "\n  ".join(missing)


def test_mcstudy_list_shows_every_registry_and_an_entrys_parameters() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mcstudy", "list", *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})

    r = run()
    assert r.returncode == 0
    for line in ("devices: ideal, pcm, rram, sram, table", "procedures: drift_compensation, inference, insitu_transfer, self_tuning"):
        assert line in r.stdout, r.stdout
    r = run("procedures", "self_tuning")
    assert r.returncode == 0 and "tune_time" in r.stdout and "'every_time' | 'once'" in r.stdout, r.stdout
    r = run("devices", "nope")
    assert r.returncode == 2 and "unknown device 'nope'; allowed: ideal, pcm" in r.stderr and "Traceback" not in r.stderr
    r = run("gadgets")
    assert r.returncode == 2 and "unknown kind 'gadgets'" in r.stderr


def _variant_example(trainer: str) -> dict:
    """A variant of ``trainer`` for the contract study: one epoch where it trains, the
    example checkpoint where it deploys one."""
    from mcstudy.registries import TRAINERS

    fields = TRAINERS.get(trainer).params.model_fields
    return {"trainer": trainer, **({"epochs": 1} if "epochs" in fields else {}), **({"checkpoint": "example.pt"} if "checkpoint" in fields else {})}


def test_every_trainer_and_procedure_gives_the_same_numbers_in_any_block_and_executor(tmp_path: Path, cache_dir: Path) -> None:
    """The contract of every registered trainer and procedure (a plugin's included): a
    study that holds each of them, with its default parameters, writes the same per-chip
    numbers in blocks of 2 on the serial executor as in blocks of 3 on a local pool."""
    import numpy as np
    import yaml

    from mcstudy import load_study, open_results
    from mcstudy.execution import RunOptions, run_study
    from mcstudy.registries import PROCEDURES, TRAINERS

    raw = {
        "name": "contracts", "seed": 3, "chips": 6, "times": ["20s", "1d"],
        "data": {"dataset": "digits", "calibration_fraction": 0.3},
        "model": {"name": "mlp", "hidden": [16]},
        "variants": {name: _variant_example(name) for name in TRAINERS.names()},
        "hardware": {"pcm": {"device": "pcm", "mapping": "differential", "periphery": {"op_drift": {"offset": 0.1}}}},
        "procedures": {name: {"kind": name} for name in PROCEDURES.names()},
    }  # fmt: skip
    study = tmp_path / "contracts.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    torch.save(build_model("mlp", MLPParams(hidden=(16,)), (1, 8, 8), 10).state_dict(), tmp_path / "example.pt")
    spec = load_study(study)
    out = {}
    for name, executor, workers, block in (("serial", "serial", None, 2), ("local", "local", 2, 3)):
        opts = RunOptions(tmp_path / f"{name}.zarr", executor=executor, workers=workers, block_size=block, cache_dir=cache_dir, progress=False)
        run_study(spec, opts)
        out[name] = open_results(opts.out).load()
    a, b = out["serial"], out["local"]
    assert set(a["variant"].values) == set(TRAINERS.names()) and set(a["procedure"].values) == set(PROCEDURES.names())
    assert not np.isnan(a["accuracy"].values).any()
    for metric in spec.metrics:
        np.testing.assert_array_equal(a[metric].values, b[metric].values, err_msg=metric)
