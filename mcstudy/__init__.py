"""mcstudy: Monte Carlo variability studies of neural networks on analog in-memory-computing chips."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from .errors import McStudyError, SpecError  # noqa: E402
from .spec import load_study, parse_study  # noqa: E402

if TYPE_CHECKING:
    from .store import open_results


def __getattr__(name: str) -> Any:
    """``open_results`` on first use: the store's xarray / dask / zarr stack is not imported
    by worker processes and commands that never read a store."""
    if name == "open_results":
        from .store import open_results

        return open_results
    raise AttributeError(f"module 'mcstudy' has no attribute {name!r}")

__all__ = ["McStudyError", "SpecError", "__version__", "load_study", "open_results", "parse_study"]
