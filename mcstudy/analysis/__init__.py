"""Analysis over results stores."""

from .summary import chip_yield, summary_table
from .tolerance import tolerance, tolerance_gain

__all__ = ["chip_yield", "summary_table", "tolerance", "tolerance_gain"]
