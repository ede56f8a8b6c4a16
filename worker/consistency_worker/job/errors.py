"""How a stage says it cannot finish; the CLI maps `retryable` to the exit code the control plane reads."""

from __future__ import annotations


class StageFailure(Exception):
    """A stage could not finish; `retryable` picks the exit code."""

    retryable = False


class PermanentStageError(StageFailure):
    """Bad config or data (missing dataset, leakage, ...): retrying cannot help."""
