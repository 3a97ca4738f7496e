"""The evaluation's input error, shared by the judge, the metrics and the suites."""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad evaluation input: unknown suite, empty data, missing direction, ..."""
