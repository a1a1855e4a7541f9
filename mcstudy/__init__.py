"""mcstudy: Monte Carlo variability studies of neural networks on analog in-memory-computing chips."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import McStudyError, SpecError  # noqa: E402
from .spec import load_study, parse_study  # noqa: E402
from .store import open_results  # noqa: E402

__all__ = ["McStudyError", "SpecError", "__version__", "load_study", "open_results", "parse_study"]
