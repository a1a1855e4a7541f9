"""Your own network: ``model: {factory: "mynet:build", kwargs: {...}}``.

``factory`` names an importable callable as ``"package.module:function"``; a module
beside the study file is importable (``mynet.py`` next to it). mcstudy calls
``function(input_shape, n_classes, **kwargs)`` and deploys the ``torch.nn.Module`` it
returns: its ``nn.Linear`` and ``nn.Conv2d`` layers run on the chips, everything else
digitally (``AnalogNetwork.describe`` lists which at the start of a run). The module's
source file's SHA-256 is part of the study's hash, so an edited network is another
study. The local executor's workers import the module from the same place; the Ray
executor ships the study's directory to every node as the job's working directory
(Ray's runtime environment), and a worker there imports the module from that copy. Every
import is checked against the SHA-256 the study was read with.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn
from pydantic import Field

from ..errors import McStudyError
from ..location import file_sha256
from ..registry import FileParamError, Params
from ..registries import MODELS

FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class FactoryParams(Params):
    factory: str = Field(pattern=FACTORY_PATTERN, description="your network's builder, 'package.module:function', called as function(input_shape, n_classes, **kwargs)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")
    source_dir: str | None = Field(None, description="where the builder's module is imported from first: the study file's directory (filled in)")
    sha256: str | None = Field(None, description="the builder's source file's SHA-256: filled in when the study is read")

    def local_dir(self) -> str | None:
        """The directory the builder's module is read from when it sits beside the study
        file (None: an installed module, or a function of this process)."""
        return self.source_dir if _local_file(self.factory.split(":")[0], self.source_dir) is not None else None

    def resolve(self, base_dir: Path | None) -> FactoryParams:
        where = str(base_dir.resolve()) if base_dir is not None else self.source_dir
        module_name = self.factory.split(":")[0]
        if module_name == "__main__":  # a function of this process (a notebook or script): mcstudy.run, serial only
            fn = getattr(sys.modules.get("__main__"), self.factory.split(":")[1], None)
            if not callable(fn):
                raise FileParamError("factory", f"no function {self.factory!r} in this process")
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                source = None
            return self.model_copy(update={"source_dir": None, "sha256": hashlib.sha256(source.encode()).hexdigest() if source else None})
        origin = _local_file(module_name, where)
        if origin is None:  # not beside the study: an installed module
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError) as e:
                raise FileParamError("factory", f"cannot find module {module_name!r}: {e}") from None
            if spec is None:
                raise FileParamError("factory", f"no module {module_name!r}, beside the study file ({where}) or on the Python path")
            origin = Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None
        digest = file_sha256(origin) if origin is not None and origin.is_file() else None
        return self.model_copy(update={"source_dir": where, "sha256": digest})


def _local_file(module_name: str, directory: str | None) -> Path | None:
    """The source file of ``module_name`` in ``directory`` (``a/b.py`` or ``a/b/__init__.py``
    for ``a.b``), or None where it is not there."""
    if directory is None:
        return None
    base = Path(directory, *module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


class _importable_from:
    """``sys.path`` with ``directory`` first for the duration (nothing when None)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def __enter__(self) -> None:
        if self.directory is not None:
            sys.path.insert(0, self.directory)

    def __exit__(self, *exc: object) -> None:
        if self.directory is not None and self.directory in sys.path:
            sys.path.remove(self.directory)


SHIPPED_SOURCE = "MCSTUDY_SHIPPED_SOURCE"
"""Set (by the Ray executor's runtime environment) on workers that received a copy of the
study's directory as their working directory: names the driver's directory it copies."""


def _builder(params: FactoryParams, field: str) -> Callable[..., Any]:
    module_name, _, attr = params.factory.partition(":")
    where = params.source_dir
    if where is not None and os.environ.get(SHIPPED_SOURCE) == where:
        where = os.getcwd()  # a Ray worker: the copy of the study's directory Ray shipped
    if _local_file(module_name, where) is not None:
        # a module beside the study: imported from there, never a same-named module
        # imported before from elsewhere (another study's mynet.py)
        top = module_name.split(".")[0]
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    with _importable_from(where):
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # the user's module failed to import: their code, their message
            raise McStudyError(f"{field} {params.factory!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    origin = getattr(module, "__file__", None)
    if params.sha256 is not None and module_name != "__main__" and origin is not None and Path(origin).is_file():
        if file_sha256(Path(origin)) != params.sha256:  # edited since the study was read, or another copy on this node
            raise McStudyError(f"{field} {params.factory!r}: {origin} is not the source the study was read with (its SHA-256 differs)")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise McStudyError(f"{field} {params.factory!r}: {module_name} ({getattr(module, '__file__', '?')}) has no function {attr!r}")
    return fn


def call_factory(params: FactoryParams, field: str, *args: Any) -> Any:
    """Import the function ``params`` names and call it with ``args`` and its kwargs; a
    failure is an error naming ``field``."""
    fn = _builder(params, field)
    try:
        return fn(*args, **params.kwargs)
    except Exception as e:
        raise McStudyError(f"{field} {params.factory!r} raised {type(e).__name__}: {e}") from None


@MODELS.register("factory", FactoryParams)
def build_factory(params: FactoryParams, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Your own network, built by your function."""
    model = call_factory(params, "model.factory", tuple(input_shape), n_classes)
    if not isinstance(model, nn.Module):
        raise McStudyError(f"model.factory {params.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
