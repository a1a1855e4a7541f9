"""Optimised weight programming over two conductance pairs (Mackin et al., Nat. Commun. 2022)."""

from .optimize import ProgrammingObjective, SearchResult, StrategyMapping, naive_vector, optimize_strategy, sample_weights
from ..hardware.strategy import Strategy

__all__ = ["ProgrammingObjective", "SearchResult", "Strategy", "StrategyMapping", "naive_vector", "optimize_strategy", "sample_weights"]
