"""``FastLearner``: the :class:`~handgrad.train.learner.Learner`, with training batches through
:class:`~handgrad.fast.FastStep`.

The Learner's batch is ``predict -> get_loss -> backward -> opt_step``, each replaceable. Here
``predict`` runs the whole forward + loss + backward in one compiled call (``learn.preds``,
``learn.loss`` and every ``p.g`` are set, exactly as the three steps would set them), and
``get_loss`` / ``backward`` hand over what it computed. Every callback event still fires in
the same order and sees the same state; the one difference is timing: a callback that
changes ``learn.preds`` in ``after_predict`` no longer changes the loss (use the plain
``Learner`` for that).

With SGD, Adam or AdamW (see :class:`~handgrad.fast.FastStep`), and no callback listening
between the forward pass and the end of the update (``after_predict``, ``after_loss``,
``after_backward``, ``after_step``: the events that could look at, change or veto a
gradient), the update is folded into the same compiled call as well (``FastStep(model,
loss_fn, opt)``), so no gradient is ever written out; ``opt_step`` then has nothing left to
do. Adding such a callback turns this off.

Validation batches use the compiled forward pass. A model the fast path does not support
trains through the readable path (with a one-line notice), with the same results.

Example:
    >>> learn = FastLearner(model, CrossEntropyLoss(), SGD(model.parameters(), 0.1),
    ...                     train_dl, valid_dl, callbacks=[Metrics(accuracy=accuracy)])
    >>> learn.fit(3)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from handgrad.fast import FastStep
from handgrad.train.callbacks.guards import NonFiniteGuard
from handgrad.train.learner import Learner


class FastLearner(Learner):
    """A :class:`~handgrad.train.learner.Learner` whose steps run through :class:`FastStep`.

    Takes the Learner's arguments. ``learn.fast`` is the :class:`FastStep` in use
    (``learn.fast.compiled`` says whether the C++ path runs).
    """

    #: The events between a batch's forward pass and its finished update.
    GRADIENT_EVENTS = ("after_predict", "after_loss", "after_backward", "after_step")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = FastStep(self.model, self.loss_fn)
        self.fast_update = FastStep(self.model, self.loss_fn, self.opt)  # the update folded in
        self._stepped_loss: Tensor | None = None
        self._updated = False

    @property
    def fused(self) -> bool:
        """Whether the next training batch also updates the weights inside the compiled call."""
        return self.fast_update.fused and not self._listening

    def _rebuild_handlers(self) -> None:
        super()._rebuild_handlers()
        # Whether any callback listens between a forward pass and its finished update; the
        # handlers change only here, so a batch checks one flag instead of four lists.
        # NonFiniteGuard (on in every `handgrad train`) only reads, and still guards a fused
        # step: a NaN/Inf loss or gradient reaches the updated weights, which it checks at the
        # same batch's after_backward, before any checkpoint (its message then names the
        # weight, not the gradient).
        self._listening = any(
            type(getattr(h, "__self__", None)) is not NonFiniteGuard
            for e in self.GRADIENT_EVENTS
            for h in self._handlers[e]
        )

    def predict(self) -> None:
        if self.training:
            # forward, loss and backward at once (p.g filled), or with the update as well
            self._updated = self.fused
            step = self.fast_update if self._updated else self.fast
            self.preds, self._stepped_loss, _ = step(self.xb, self.yb)
        else:
            self.preds = self.fast.predict(self.xb)

    def opt_step(self) -> None:
        if not self._updated:
            super().opt_step()

    def zero_grad(self) -> None:
        if self._updated:
            self._updated = False  # the fused step left no gradient to clear
        else:
            super().zero_grad()

    def get_loss(self) -> None:
        if self._stepped_loss is not None:
            self.loss, self._stepped_loss = self._stepped_loss, None
        else:
            super().get_loss()

    def backward(self) -> None:
        """Nothing left to do: ``predict`` already back-propagated this batch."""
