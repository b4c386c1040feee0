"""The reporting callbacks every ``Learner`` starts with, unless it was given its own."""

from __future__ import annotations

from collections.abc import Iterable

from handgrad.nn.module import Module
from handgrad.train.loop import Callback
from handgrad.train.reporting.averages import Metrics, default_metrics
from handgrad.train.reporting.history import Recorder
from handgrad.train.reporting.printer import ProgressPrinter


def default_callbacks(given: Iterable[Callback], loss_fn: Module, *, quiet: bool) -> list[Callback]:
    """``Metrics`` (loss; accuracy for a cross-entropy loss), ``Recorder`` and, unless
    ``quiet``, a ``ProgressPrinter``: each one only when no callback in ``given`` already has
    its ``name`` (``metrics``, ``recorder``, ``progress``), so one passed in replaces it."""
    names = {cb.name for cb in given}
    wanted: list[Callback] = []
    if "metrics" not in names:
        wanted.append(Metrics(**default_metrics(loss_fn)))
    if "recorder" not in names:
        wanted.append(Recorder())
    if not quiet and "progress" not in names:
        wanted.append(ProgressPrinter())
    return wanted
