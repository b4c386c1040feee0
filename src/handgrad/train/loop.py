"""The training loop: ``Loop``, whose every step can be watched or replaced by callbacks.

:class:`~handgrad.train.learner.Learner` is this loop with the reporting callbacks a user
expects by default; callbacks and the rest of the library name it, not ``Loop``.

This is miniai's design (fast.ai course part 2), on hand-written gradients. ``fit`` runs
epochs; an epoch is a training pass then a validation pass; a batch is::

    before_batch -> predict -> after_predict -> get_loss -> after_loss
        (training only) -> backward -> after_backward -> opt_step -> after_step -> zero_grad
    -> after_batch

and ``fit``/epoch/batch are each wrapped as ``before_X`` ... ``after_X`` with ``cleanup_X`` run
however the block ends. Callbacks run in ascending ``order`` (ties: the order they were added).

Control flow is by exception, as in miniai: a callback raises ``CancelBatchException`` to skip
the rest of a batch (no ``after_batch``; nothing is stepped when raised before ``opt_step``),
``CancelEpochException`` to end the current pass (training or validation) early, and
``CancelFitException`` to stop training cleanly. The cancelled block's ``after_X`` is skipped
and its ``cleanup_X`` still runs; the exception goes no further. Any other exception stops
``fit`` and propagates (after every ``cleanup_X`` has run).

No autograd is involved: ``fit`` runs under ``torch.no_grad()``; ``backward`` asks the loss and
the model for their hand-written gradients, and the optimizer reads ``param.g``. Nothing is
synchronised with ``.item()`` per batch here; callbacks that need numbers accumulate tensors and
read them once per epoch (or per progress refresh).

On the CPU ``fit`` flushes subnormal floats to zero (``subnormals="flush"``, the default; see
:mod:`handgrad.train.subnormals`: they slow Adam's later epochs by half and change nothing that
matters) and restores the previous setting when it returns or raises; ``subnormals="keep"``
trains with IEEE subnormals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor

from handgrad.nn.module import Module
from handgrad.train.subnormals import check_policy, subnormal_policy

#: Every event a callback may handle, in the order they first occur.
EVENTS = (
    "before_fit",
    "before_epoch",
    "before_batch",
    "after_predict",
    "after_loss",
    "after_backward",
    "after_step",
    "after_batch",
    "cleanup_batch",
    "after_epoch",
    "cleanup_epoch",
    "after_fit",
    "cleanup_fit",
)
_PREFIXES = ("before_", "after_", "cleanup_")


class CancelFitException(Exception):
    """Stop ``fit`` cleanly: ``after_fit`` is skipped, ``cleanup_fit`` runs."""


class CancelEpochException(Exception):
    """End the current training or validation pass: ``after_epoch`` is skipped."""


class CancelBatchException(Exception):
    """Skip the rest of this batch: no further step of it runs, ``after_batch`` is skipped."""


class Callback:
    """Base of every callback: define any of :data:`EVENTS` as ``method(self, learn)``.

    Attributes:
        order: callbacks run in ascending order (ties keep the order they were added).
        name: when set, the learner exposes the callback as ``learn.<name>`` (``learn.recorder``).
    """

    order: int = 0
    name: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


class Optimizer(Protocol):
    """What the learner needs from an optimizer (:mod:`handgrad.optim` provides them)."""

    lr: float

    def step(self) -> None: ...

    def zero_grad(self) -> None: ...


class Loop:
    """Train ``model`` with ``loss_fn`` and ``opt`` on ``train_dl``, validating on ``valid_dl``.

    Args:
        model: a :class:`~handgrad.nn.module.Module` mapping a batch ``xb`` to predictions.
        loss_fn: a loss module called as ``loss_fn(preds, yb)`` returning a scalar tensor.
        opt: an optimizer over ``model.parameters()`` (``step``, ``zero_grad``, ``lr``).
        train_dl: iterable of ``(xb, yb)`` batches; if it has ``set_epoch(e)``, it is called
            before each training pass (the shuffle order then depends on (seed, epoch) only).
        valid_dl: validation batches, or ``None`` to skip validation.
        callbacks: :class:`Callback` objects (see :data:`EVENTS`).
        device: where the model is moved and where batches are moved if they are elsewhere.
        subnormals: ``"flush"`` (default) flushes subnormal floats to zero during ``fit`` on
            the CPU; ``"keep"`` keeps IEEE behaviour (the setting before ``fit`` is restored).

    During ``fit`` these attributes describe the current state: ``model, opt, loss_fn, epoch``
    (0-based), ``n_epochs, step`` (optimizer steps taken so far), ``batch_idx, xb, yb, preds,
    loss`` (a tensor), ``training`` (``True`` in the training pass) and ``dl`` (the loader in use).
    """

    def __init__(
        self,
        model: Module,
        loss_fn: Module,
        opt: Optimizer,
        train_dl: Iterable[tuple[Tensor, Tensor]],
        valid_dl: Iterable[tuple[Tensor, Tensor]] | None = None,
        callbacks: Iterable[Callback] = (),
        device: torch.device | str = "cpu",
        subnormals: str = "flush",
    ) -> None:
        check_policy(subnormals)
        self.subnormals = subnormals
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.device = torch.device(device)
        self.callbacks: list[Callback] = []
        self._handlers: dict[str, list[Callable[[Loop], None]]] = {}
        self.epoch = 0
        self.n_epochs = 0
        self.step = 0
        self.batch_idx = 0
        # The current batch and its results (empty until the first batch runs).
        self.xb: Tensor = torch.empty(0)
        self.yb: Tensor = torch.empty(0)
        self.preds: Tensor = torch.empty(0)
        self.loss: Tensor = torch.empty(0)
        self.training = False
        self.dl: Iterable[tuple[Tensor, Tensor]] | None = None
        self.add_callbacks(*callbacks)

    # ------------------------------------------------------------------------------ callbacks
    def add_callbacks(self, *callbacks: Callback) -> None:
        for cb in callbacks:
            unknown = [
                n
                for n in dir(cb)
                if n.startswith(_PREFIXES) and callable(getattr(cb, n)) and n not in EVENTS
            ]
            if unknown:
                raise TypeError(
                    f"{type(cb).__name__} defines {', '.join(unknown)}, which is not an event; "
                    f"events are {', '.join(EVENTS)}"
                )
            self.callbacks.append(cb)
            if cb.name:
                setattr(self, cb.name, cb)
        self._rebuild_handlers()

    def remove_callbacks(self, *callbacks: Callback) -> None:
        for cb in callbacks:
            self.callbacks.remove(cb)
            if cb.name and getattr(self, cb.name, None) is cb:
                delattr(self, cb.name)
        self._rebuild_handlers()

    @contextmanager
    def added_callbacks(self, *callbacks: Callback) -> Iterator[Loop]:
        """``with learn.added_callbacks(cb): learn.fit(1)``: callbacks for one block only."""
        self.add_callbacks(*callbacks)
        try:
            yield self
        finally:
            self.remove_callbacks(*callbacks)

    def _rebuild_handlers(self) -> None:
        # Sorting once here (stable: ties keep insertion order) keeps the per-batch cost at a
        # list walk per event.
        ordered = sorted(self.callbacks, key=lambda cb: cb.order)
        self._handlers = {
            event: [getattr(cb, event) for cb in ordered if hasattr(cb, event)] for event in EVENTS
        }

    def callback(self, event: str) -> None:
        """Run every callback's ``event`` method, in order."""
        for handler in self._handlers[event]:
            handler(self)

    # ------------------------------------------------------------------ the replaceable steps
    def predict(self) -> None:
        self.preds = self.model(self.xb)

    def get_loss(self) -> None:
        self.loss = self.loss_fn(self.preds, self.yb)

    def backward(self) -> None:
        """The hand-written backward pass: dL/dpreds from the loss, then through the model.

        The data needs no gradient, so the first layer skips its input gradient."""
        dpreds = self.loss_fn.backward()[0]
        self.model.backward(dpreds, need_input_grad=False)

    def opt_step(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    # ---------------------------------------------------------------------------------- loop
    def fit(self, n_epochs: int, *, start_epoch: int = 0, start_step: int | None = None) -> None:
        """Train until epoch ``n_epochs`` (exclusive), starting at ``start_epoch``.

        ``start_epoch``/``start_step`` continue a run (see
        :func:`handgrad.train.checkpoint.restore`); ``start_step`` defaults to
        ``start_epoch * len(train_dl)``.
        """
        if n_epochs < 0 or not 0 <= start_epoch <= n_epochs:
            raise ValueError(f"fit: need 0 <= start_epoch ({start_epoch}) <= n_epochs ({n_epochs})")
        self.n_epochs = n_epochs
        if start_step is None:
            start_step = start_epoch * len(self.train_dl) if start_epoch else 0  # type: ignore[arg-type]
        self.step = start_step
        self.epoch = start_epoch
        self.model.to(self.device)
        try:
            with torch.no_grad(), subnormal_policy(self.subnormals, self.device):
                self._block("fit", CancelFitException, self._fit_epochs)
        finally:
            self._discard_pending()

    def _fit_epochs(self) -> None:
        for epoch in range(self.epoch, self.n_epochs):
            self.epoch = epoch
            self._one_pass(True)
            if self.valid_dl is not None:
                self._one_pass(False)

    def _block(self, name: str, cancel: type[Exception], body: Callable[[], None]) -> None:
        try:
            self.callback(f"before_{name}")
            body()
            self.callback(f"after_{name}")
        except cancel:
            pass
        finally:
            self.callback(f"cleanup_{name}")

    def _one_pass(self, training: bool) -> None:
        self.training = training
        self.model.train(training)
        self.loss_fn.train(training)
        self.dl = self.train_dl if training else self.valid_dl
        if training and hasattr(self.dl, "set_epoch"):
            self.dl.set_epoch(self.epoch)
        try:
            self._block("epoch", CancelEpochException, self._batches)
        finally:
            if training:
                self._discard_pending()

    def _batches(self) -> None:
        device = self.device
        for i, (xb, yb) in enumerate(self.dl):  # type: ignore[arg-type]
            self.batch_idx = i
            if xb.device != device:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            self.xb, self.yb = xb, yb
            self._one_batch()

    def _one_batch(self) -> None:
        zeroed = False
        try:
            self.callback("before_batch")
            self.predict()
            self.callback("after_predict")
            self.get_loss()
            self.callback("after_loss")
            if self.training:
                self.backward()
                self.callback("after_backward")
                self.opt_step()
                self.step += 1
                self.callback("after_step")
                self.zero_grad()
                zeroed = True
            self.callback("after_batch")
        except CancelBatchException:
            if self.training:
                # A cancelled training batch leaves no forward context and no gradient behind.
                self._discard_pending()
                if not zeroed:
                    self.zero_grad()
        finally:
            self.callback("cleanup_batch")

    @property
    def last_pass(self) -> bool:
        """True in the pass that ends the epoch (validation, or training when there is none)."""
        return not self.training or self.valid_dl is None

    def _discard_pending(self) -> None:
        self.model.clear_saved()
        self.loss_fn.clear_saved()

    def __repr__(self) -> str:
        cbs = ", ".join(type(cb).__name__ for cb in sorted(self.callbacks, key=lambda c: c.order))
        return f"{type(self).__name__}(model={type(self.model).__name__}, callbacks=[{cbs}])"
