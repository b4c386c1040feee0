"""What a run reports by default: the means of each pass (``Metrics``), the history
(``Recorder``) and plain-text progress (``ProgressPrinter``).

Every :class:`~handgrad.train.learner.Learner` gets these unless it is given its own (see
:func:`default_callbacks`); they sit below the learner so that it can add them, and
:mod:`handgrad.train.callbacks` re-exports them beside the optional callbacks.
"""

from handgrad.train.reporting.averages import Metrics, default_metrics, detached
from handgrad.train.reporting.defaults import default_callbacks
from handgrad.train.reporting.history import Recorder
from handgrad.train.reporting.printer import ProgressPrinter, epoch_line, format_metrics

__all__ = [
    "Metrics",
    "ProgressPrinter",
    "Recorder",
    "default_callbacks",
    "default_metrics",
    "detached",
    "epoch_line",
    "format_metrics",
]
