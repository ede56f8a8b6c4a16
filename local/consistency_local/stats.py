"""The report's statistics live in ``consistency_core.stats`` (the evaluate stage computes the same
paired figures for the status); re-exported here for the local report."""

from consistency_core.stats import Paired, Rate, mcnemar_exact, paired, paired_from_rows, wilson

__all__ = ["Paired", "Rate", "mcnemar_exact", "paired", "paired_from_rows", "wilson"]
