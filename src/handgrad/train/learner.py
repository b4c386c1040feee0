"""The ``Learner``: the training loop (:mod:`handgrad.train.loop`) with the reporting a user
expects, so that ``Learner(...).fit(5)`` shows its progress and metrics.

Unless given their own (a callback with the same ``name``), a learner adds ``Metrics`` (the
loss; accuracy when the loss is a cross-entropy), ``Recorder`` and a ``ProgressPrinter`` that
writes one plain line per epoch to stdout; ``quiet=True`` leaves the printer out. The event
vocabulary (``Callback``, ``EVENTS``, the ``Cancel*`` exceptions) is re-exported from here.
"""

from __future__ import annotations

from typing import Any

from handgrad.train.loop import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Loop,
    Optimizer,
)
from handgrad.train.reporting import default_callbacks

__all__ = [
    "EVENTS",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "Learner",
    "Optimizer",
]


class Learner(Loop):
    """Train ``model`` with ``loss_fn`` and ``opt`` on ``train_dl``, validating on ``valid_dl``,
    and report each epoch (see the module's docstring).

    Args:
        *args, **kwargs: ``Loop``'s (``model, loss_fn, opt, train_dl, valid_dl=None,
            callbacks=(), device="cpu", subnormals="flush"``).
        quiet: print nothing (metrics and history are still kept).

    Example:
        >>> learn = Learner(model, CrossEntropyLoss(), Adam(model.parameters(), 3e-3),
        ...                 train_dl, valid_dl)
        >>> learn.fit(5)                                   # one line per epoch
        >>> learn.recorder.history[-1]["valid_accuracy"]
    """

    def __init__(self, *args: Any, quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callbacks(*default_callbacks(self.callbacks, self.loss_fn, quiet=quiet))
