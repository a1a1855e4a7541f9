"""Analysis over results stores."""

from .summary import chip_yield, summary_table

__all__ = ["chip_yield", "summary_table"]
