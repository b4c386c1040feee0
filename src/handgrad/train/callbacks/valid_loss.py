"""``ValidLoss``: measure the validation pass with a loss other than the one trained on."""

from __future__ import annotations

from handgrad.nn.module import Module
from handgrad.train.learner import Callback, Learner


class ValidLoss(Callback):
    """Use ``loss_fn`` in the validation pass instead of the training loss: e.g. plain
    cross-entropy while training with label smoothing, so that ``valid_loss`` stays the number
    everyone compares (and the one ``handgrad evaluate`` reports)."""

    order = -20

    def __init__(self, loss_fn: Module) -> None:
        self.loss_fn = loss_fn
        self._saved: Module | None = None

    def before_epoch(self, learn: Learner) -> None:
        if not learn.training:
            self._saved, learn.loss_fn = learn.loss_fn, self.loss_fn.eval()

    def cleanup_epoch(self, learn: Learner) -> None:
        if self._saved is not None:
            learn.loss_fn, self._saved = self._saved, None
