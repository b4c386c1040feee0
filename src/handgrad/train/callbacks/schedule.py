"""``LRScheduler``: the learning rate as a pure function of the training step."""

from __future__ import annotations

from collections.abc import Callable

from handgrad.train.learner import Callback, Learner


class LRScheduler(Callback):
    """Before each training batch, ``opt.lr = schedule(learn.step)`` (step counted from 0).

    ``schedule`` is any ``step -> lr`` callable, e.g. :class:`handgrad.optim.schedules.OneCycle`.
    Because the learning rate is a pure function of the step, a resumed run follows the same
    curve without saving any scheduler state.
    """

    order = -10

    def __init__(self, schedule: Callable[[int], float]) -> None:
        self.schedule = schedule

    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            learn.opt.lr = float(self.schedule(learn.step))
