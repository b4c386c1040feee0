"""The learning-rate range test: ``lr_find(learn)`` and the ``LRFinder`` callback it runs.

It only measures; ``handgrad.app.plots.training.plot_lr_find`` draws the curve.
"""

from __future__ import annotations

import math

from handgrad.train.learner import Callback, CancelEpochException, CancelFitException, Learner


class LRFinder(Callback):
    """Leslie Smith's learning-rate range test: raise the learning rate exponentially from
    ``start_lr`` to ``end_lr`` over ``num_steps`` training steps and record the loss; stop
    early when the smoothed loss exceeds ``stop_factor`` times its minimum (or goes NaN).

    The suggestion is the learning rate at the minimum of the smoothed loss, divided by 10:
    the largest rate that is still clearly on the descending part of the curve. The loss is
    read every step (``.item()``): the test needs it to decide when to stop.
    """

    order = -10

    def __init__(
        self,
        start_lr: float = 1e-6,
        end_lr: float = 10.0,
        num_steps: int = 100,
        *,
        stop_factor: float = 4.0,
        beta: float = 0.9,
    ) -> None:
        if not 0 < start_lr < end_lr:
            raise ValueError(f"LRFinder: need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
        if num_steps < 2:
            raise ValueError(f"LRFinder: num_steps must be >= 2, got {num_steps}")
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, num_steps
        self.stop_factor, self.beta = stop_factor, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []

    def before_fit(self, learn: Learner) -> None:
        self.lrs, self.losses, self.smoothed = [], [], []
        self._avg, self._best = 0.0, math.inf

    def before_epoch(self, learn: Learner) -> None:
        if not learn.training:
            raise CancelEpochException()  # no validation during the test

    def before_batch(self, learn: Learner) -> None:
        i = len(self.lrs)
        learn.opt.lr = self.start_lr * (self.end_lr / self.start_lr) ** (i / (self.num_steps - 1))

    def after_loss(self, learn: Learner) -> None:
        loss = learn.loss.item()
        self.lrs.append(float(learn.opt.lr))
        self.losses.append(loss)
        if not math.isfinite(loss):
            raise CancelFitException()
        # exponential moving average with bias correction (the first values are not damped)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** len(self.losses))
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if smooth > self.stop_factor * self._best and len(self.losses) > 5:
            raise CancelFitException()  # diverged: stop before stepping with this rate

    def after_step(self, learn: Learner) -> None:
        if len(self.lrs) >= self.num_steps:
            raise CancelFitException()

    @property
    def suggestion(self) -> float | None:
        """The learning rate at the smoothed loss's minimum, divided by 10."""
        if len(self.smoothed) < 3:
            return None
        i = min(range(len(self.smoothed)), key=self.smoothed.__getitem__)
        return self.lrs[i] / 10


def lr_find(
    learn: Learner,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    num_steps: int = 100,
    stop_factor: float = 4.0,
) -> LRFinder:
    """Run the range test on ``learn`` and put the model and optimizer back as they were.

    Only the finder runs (the learner's own callbacks are set aside for the test). Returns the
    :class:`LRFinder` with ``lrs``, ``losses``, ``smoothed`` and ``suggestion``.
    """
    finder = LRFinder(start_lr, end_lr, num_steps, stop_factor=stop_factor)
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_state = learn.opt.state_dict() if hasattr(learn.opt, "state_dict") else None
    saved_callbacks = list(learn.callbacks)
    learn.remove_callbacks(*saved_callbacks)
    learn.add_callbacks(finder)
    try:
        per_epoch = max(1, len(learn.train_dl))  # type: ignore[arg-type]
        learn.fit(math.ceil(num_steps / per_epoch))
    finally:
        learn.remove_callbacks(finder)
        learn.add_callbacks(*saved_callbacks)
        learn.model.load_state_dict(weights)
        if opt_state is not None:
            learn.opt.load_state_dict(*opt_state)
    return finder
