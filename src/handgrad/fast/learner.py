"""``FastLearner``: the :class:`~handgrad.learner.Learner`, with training batches through
:class:`~handgrad.fast.FastStep`.

The Learner's batch is ``predict -> get_loss -> backward -> opt_step``, each replaceable. Here
``predict`` runs the whole forward + loss + backward in one compiled call (``learn.preds``,
``learn.loss`` and every ``p.g`` are set, exactly as the three steps would set them), and
``get_loss`` / ``backward`` hand over what it computed. Every callback event still fires in
the same order and sees the same state; the one difference is timing: a callback that
changes ``learn.preds`` in ``after_predict`` no longer changes the loss (use the plain
``Learner`` for that). Validation batches use the compiled forward pass. A model the fast path
does not support trains through the readable path (with a one-line notice), with the same
results.

Example:
    >>> learn = FastLearner(model, CrossEntropyLoss(), SGD(model.parameters(), 0.1),
    ...                     train_dl, valid_dl, callbacks=[Metrics(accuracy=accuracy)])
    >>> learn.fit(3)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..learner import Learner
from . import FastStep


class FastLearner(Learner):
    """A :class:`~handgrad.learner.Learner` whose steps run through :class:`FastStep`.

    Takes the Learner's arguments. ``learn.fast`` is the :class:`FastStep` in use
    (``learn.fast.compiled`` says whether the C++ path runs).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = FastStep(self.model, self.loss_fn)
        self._stepped_loss: Tensor | None = None

    def predict(self) -> None:
        if self.training:
            # forward, loss and backward at once; p.g is filled here
            self.preds, self._stepped_loss, _ = self.fast(self.xb, self.yb)
        else:
            self.preds = self.fast.predict(self.xb)

    def get_loss(self) -> None:
        if self._stepped_loss is not None:
            self.loss, self._stepped_loss = self._stepped_loss, None
        else:
            super().get_loss()

    def backward(self) -> None:
        """Nothing left to do: ``predict`` already back-propagated this batch."""
