"""On-chip procedures, found by name through ``PROCEDURES``."""

from . import drift_compensation, inference  # noqa: F401  (register)
from .base import METRICS, PROCEDURES, EvalData, Procedure

__all__ = ["METRICS", "PROCEDURES", "EvalData", "Procedure"]
