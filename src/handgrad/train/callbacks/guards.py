"""Callbacks that stop training: ``NonFiniteGuard`` when a loss, a gradient or the weights go
NaN or Inf, ``EarlyStopping`` when a monitored metric stops improving."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from handgrad.errors import HandgradError
from handgrad.train.callbacks.metrics import improved, metric_value
from handgrad.train.learner import Callback, CancelFitException, Learner


class NonFiniteError(HandgradError):
    """Training produced NaN or Inf (loss, gradient or updated weights); it stopped before
    anything non-finite was saved."""


class NonFiniteGuard(Callback):
    """Stop training when the loss, a gradient or, after an update, a weight is NaN or Inf.

    Raises :class:`NonFiniteError` naming the step and the culprit: a weight that an update
    made non-finite (finite gradients can still overflow, e.g. with a huge learning rate), the
    parameter whose gradient first went non-finite (in backward order, i.e. the one closest to
    the output) or, for a non-finite loss, the first layer whose output was non-finite. Runs
    last among ``after_backward`` callbacks, so it sees the gradients the optimizer would use.

    The test is one fused reduction and one sync per batch: the sum of the loss, of every
    gradient and of every weight (which the previous update left) is finite exactly when none
    of them holds NaN or Inf (barring an overflow of the sum itself, which falls back to the
    exact per-tensor test). The last update of a training pass is checked right after it, so
    an epoch's checkpoint never holds a non-finite weight.
    """

    order = 100

    def before_fit(self, learn: Learner) -> None:
        self._params = list(learn.model.named_parameters())
        self._last_batch: int | None = None
        self._check_weights(learn, before_training=True)

    def before_epoch(self, learn: Learner) -> None:
        n = len(learn.dl) if learn.training and hasattr(learn.dl, "__len__") else None  # type: ignore[arg-type]
        self._last_batch = None if n is None else n - 1

    def after_backward(self, learn: Learner) -> None:
        sums = [p.g.sum() for _, p in self._params if p.g is not None]
        sums += [p.sum() for _, p in self._params]
        total = learn.loss.detach().sum()
        if sums:
            total = total + torch.stack(sums).sum()
        if bool(torch.isfinite(total)):
            return
        self._check_weights(learn)  # before the loss and gradients the weights spoilt
        problem = self._diagnose(learn)
        if problem:
            raise NonFiniteError(problem)

    def after_step(self, learn: Learner) -> None:
        # Every other update is checked at the next batch's after_backward; the pass's last
        # one now, before the epoch ends and its checkpoint is written.
        if self._last_batch is None or learn.batch_idx == self._last_batch:
            self._check_weights(learn)

    def _check_weights(self, learn: Learner, *, before_training: bool = False) -> None:
        """Raise when a weight is NaN/Inf: the last update (``learn.step``) made it so."""
        sums = [p.sum() for _, p in self._params]
        if not sums or bool(torch.stack(sums).isfinite().all()):
            return
        bad = _non_finite((name, p) for name, p in self._params)
        if not bad:
            return  # the finite sum overflowed; every weight is fine
        first, count = bad[0]
        others = f"; {len(bad) - 1} other parameter(s) too" if len(bad) > 1 else ""
        if before_training:
            raise NonFiniteError(
                f"{first} holds {count} NaN/Inf value(s) before training{others}; load finite "
                "weights or initialise the model again"
            )
        raise NonFiniteError(
            f"step {learn.step} (epoch {learn.epoch + 1}): the update made {first} non-finite "
            f"({count} NaN/Inf value(s){others}) from a finite loss and finite gradients: the "
            "step overflowed; training stopped before saving it; lower the learning rate (--lr)"
        )

    def _diagnose(self, learn: Learner) -> str | None:
        where = f"step {learn.step + 1} (epoch {learn.epoch + 1}, batch {learn.batch_idx + 1})"
        fix = (
            "no parameter was updated with it; lower the learning rate (--lr), or check the "
            "data for NaN/Inf"
        )
        bad = _non_finite((name, p.g) for name, p in self._params if p.g is not None)
        loss_ok = bool(torch.isfinite(learn.loss).all())
        if loss_ok and not bad:
            return None  # the finite sum overflowed; every tensor is fine
        if not loss_ok:
            origin = _first_non_finite_output(learn)
            return f"{where}: the loss is {learn.loss.item()} ({origin}); {fix}"
        first, count = bad[-1]  # parameters are listed in forward order: the last is nearest
        others = f"; {len(bad) - 1} earlier parameter(s) too" if len(bad) > 1 else ""
        return (
            f"{where}: the gradient of {first} has {count} NaN/Inf value(s) (first in "
            f"backward order{others}); {fix}"
        )


def _non_finite(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, int]]:
    """``(name, how many NaN/Inf values)`` for each tensor that holds any, in order."""
    counts = ((name, int((~torch.isfinite(t)).sum())) for name, t in named)
    return [(name, n) for name, n in counts if n]


def _first_non_finite_output(learn: Learner) -> str:
    """Re-run the batch forward (eval mode, nothing saved) and name the first layer whose
    output holds NaN/Inf."""
    if not bool(torch.isfinite(learn.xb).all()):
        return "the input batch itself holds NaN/Inf"
    found: list[str] = []
    handles = []
    for name, module in learn.model.named_modules():
        if name and not list(module._children()):

            def hook(m: Any, args: Any, out: Any, name: str = name) -> None:
                if not found and isinstance(out, Tensor) and not bool(torch.isfinite(out).all()):
                    found.append(f"{name} ({m._label()})")

            handles.append(module.register_forward_hook(hook))
    was_training = learn.model.training
    try:
        learn.model.eval()
        learn.model(learn.xb)
    finally:
        for h in handles:
            h.remove()
        learn.model.train(was_training)
    if found:
        return f"first NaN/Inf in the output of {found[0]}"
    return "the model's output is finite: the loss itself overflowed"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs. The decision is taken at the end of an epoch; training stops before the next one
    starts, so the epoch's checkpoint is still written. The reason is left in
    ``learn.stop_reason``.
    """

    order = 25
    name = "early_stopping"

    def __init__(
        self,
        monitor: str = "valid_loss",
        *,
        patience: int = 3,
        mode: str = "min",
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stop = False

    def before_fit(self, learn: Learner) -> None:
        if learn.epoch == 0:
            self.best, self.best_epoch, self.wait, self.stop = None, 0, 0, False

    def before_epoch(self, learn: Learner) -> None:
        if learn.training and self.stop:
            learn.stop_reason = (  # type: ignore[attr-defined]
                f"early stopping: {self.monitor} has not improved for {self.patience} epochs "
                f"(best {self.best:.4f} at epoch {self.best_epoch})"
            )
            raise CancelFitException()

    def after_epoch(self, learn: Learner) -> None:
        if not learn.last_pass:
            return
        value = metric_value(learn, self.monitor)
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, learn.epoch + 1, 0
        else:
            self.wait += 1
            self.stop = self.wait >= self.patience

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        meta = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        return {}, meta | {"stop": self.stop}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = meta["best"], meta["best_epoch"]
        self.wait, self.stop = meta["wait"], meta["stop"]
