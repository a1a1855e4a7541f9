"""On-chip procedures, found by name through ``PROCEDURES``."""

from . import drift_compensation, inference, insitu_transfer, self_tuning  # noqa: F401  (register)
from .base import METRIC_ATTRS, METRICS, PROCEDURES, EvalData, Procedure

__all__ = ["METRICS", "METRIC_ATTRS", "PROCEDURES", "EvalData", "Procedure"]
