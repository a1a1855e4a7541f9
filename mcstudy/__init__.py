"""mcstudy: Monte Carlo variability studies of neural networks on analog in-memory-computing chips.

``mcstudy.run(study, ...)`` runs a study (a file, a dict or a loaded study) and returns
its results as an ``xarray.Dataset``; ``mcstudy.open_results(store)`` opens a store.

``import mcstudy`` is light: the study schema (``load_study``, ``parse_study``: pydantic
and the registries), the runner and the store (``open_results``: xarray, dask, zarr) are
imported on first use, so worker processes and commands that never touch them do not pay
for them.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from .errors import McStudyError, SpecError

if TYPE_CHECKING:
    from .api import run
    from .spec import load_study, parse_study
    from .store import open_results

_LAZY = {"load_study": "spec", "parse_study": "spec", "open_results": "store", "run": "api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mcstudy' has no attribute {name!r}")


__all__ = ["McStudyError", "SpecError", "__version__", "load_study", "open_results", "parse_study", "run"]
