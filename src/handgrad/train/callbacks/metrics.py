"""Helpers for callbacks that read ``Metrics``: the latest value of one, and whether it improved.

``Metrics`` itself is part of the learner's default reporting (:mod:`handgrad.train.reporting`).
"""

from __future__ import annotations

import math

from handgrad.errors import HandgradError
from handgrad.train.learner import Learner
from handgrad.train.reporting.averages import MetricFn, Metrics, detached

__all__ = ["MetricFn", "Metrics", "detached", "improved", "metric_value"]


def metric_value(learn: Learner, name: str) -> float:
    """The latest value of ``name`` in ``learn.metrics``, for callbacks that monitor one."""
    metrics = getattr(learn, "metrics", None)
    values = metrics.values if isinstance(metrics, Metrics) else {}
    if name not in values:
        raise HandgradError(
            f"no metric {name!r} to monitor (have: {', '.join(values) or 'none'}); "
            "add a Metrics callback or monitor one of those"
        )
    return values[name]


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` ``min`` or ``max``);
    the first finite value always does."""
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta
