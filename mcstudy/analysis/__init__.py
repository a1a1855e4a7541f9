"""Analysis over results stores: statistics with confidence intervals, tolerance,
figures, the HTML report and Parquet export."""

from .export import export_parquet
from .plots import plot_distributions, plot_paired, plot_tolerance, plot_yield
from .report import summary_with_intervals, write_report
from .stats import chip_yield_ci, chips_needed, mean_ci, paired_difference, paired_table, quantiles_ci, wilson_interval
from .summary import chip_yield, summary_table
from .tolerance import tolerance, tolerance_gain

__all__ = [
    "chip_yield", "chip_yield_ci", "chips_needed", "export_parquet", "mean_ci", "paired_difference", "paired_table",
    "plot_distributions", "plot_paired", "plot_tolerance", "plot_yield", "quantiles_ci",
    "summary_table", "summary_with_intervals", "tolerance", "tolerance_gain", "wilson_interval", "write_report",
]  # fmt: skip
