"""One training epoch (W2-W4), timed as a user would run it: PyTorch's ``torch.nn`` +
``loss.backward()`` + ``torch.optim``, or one of handgrad's paths (the readable loop, the
compiled step, the Learner). ``probe`` takes the first step and returns what the guard checks."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from handgrad.app.bench.data import Batches
from handgrad.app.bench.models import handgrad_tensors, torch_tensors
from handgrad.app.progress import Progress
from handgrad.fast import FastStep
from handgrad.fast.learner import FastLearner
from handgrad.nn.layers import Dropout
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.module import Module
from handgrad.optim.optimizers import OPTIMIZERS
from handgrad.train.callbacks import Metrics, Recorder
from handgrad.train.learner import Callback, Learner
from handgrad.train.recipes import metric_for


def _optimizer_kwargs(opt: str, lr: float) -> dict[str, Any]:
    return {"lr": lr, **({"weight_decay": 0.01} if opt == "adamw" else {})}


def make_quiet_console() -> Any:
    """A rich console that renders into memory: the Learner's progress output costs what it
    costs on a terminal, but does not interleave with the bench's table."""

    return Console(file=io.StringIO(), force_terminal=True, width=100)


class TorchTrain:
    """PyTorch eager: ``torch.nn`` modules, ``loss.backward()``, ``torch.optim`` (defaults)."""

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        batches: Batches,
        names: list[str],
        opt: str,
        lr: float,
        smoothing: float = 0.0,
    ):
        self.model = make_model()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.batches, self.names = batches, names
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt]
        self.opt = cls(self.model.parameters(), **_optimizer_kwargs(opt, lr))

    def loss_of(self, xb: Tensor, yb: Tensor) -> Tensor:
        """The forward pass and the loss (a peer compiles this)."""
        return self.loss_fn(self.model(xb), yb)

    def step(self) -> None:
        """The optimizer's update (a peer compiles this too)."""
        self.opt.step()

    def run(self) -> None:
        loss_of, step, opt = self.loss_of, self.step, self.opt
        for xb, yb in self.batches:
            opt.zero_grad(set_to_none=True)
            loss = loss_of(xb, yb)
            loss.backward()
            step()

    def probe(self) -> dict[str, Tensor]:
        for m in self.model.modules():  # dropout masks cannot match across libraries
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        xb, yb = next(iter(self.batches))
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_of(xb, yb)
        loss.backward()
        out = torch_tensors(self.model, self.names, grads=True)
        self.step()
        out |= torch_tensors(self.model, self.names, grads=False)
        return out | {"loss": loss.detach()}


class HandgradTrain:
    """handgrad, one of five paths: ``loop`` (the readable Python step a learner reads),
    ``fast`` (:class:`handgrad.fast.FastStep`, one compiled call per step), ``fast fused``
    (the same with plain SGD's update inside the compiled call), ``learner``
    (``Learner.fit`` with progress, metrics and recorder callbacks) or ``fast learner``
    (the same with :class:`handgrad.fast.learner.FastLearner`)."""

    def __init__(
        self,
        make_model: Callable[[], Module],
        batches: Batches,
        opt: str,
        lr: float,
        path: str,
        smoothing: float = 0.0,
    ):

        self.model = make_model()
        self.loss_fn = CrossEntropyLoss(smoothing)
        self.batches, self.path = batches, path
        self.opt = OPTIMIZERS[opt](self.model.parameters(), **_optimizer_kwargs(opt, lr))
        self._run_learner: Any = None
        self.fast = None
        if path.startswith("fast") and path != "fast learner":
            # "fast fused": the optimizer is part of the compiled step (plain SGD only)
            fused_opt = self.opt if path == "fast fused" else None
            self.fast = FastStep(self.model, self.loss_fn, fused_opt)

    def run(self) -> None:
        if self.path.endswith("learner"):
            # One Learner per variant, as a training run has one: what is timed is an epoch
            # (its callbacks' per-epoch work included), not building the Learner.
            if self._run_learner is None:
                self._run_learner = self._learner(self.batches)
            self._run_learner.fit(1)
            return
        model, loss_fn, opt, fast = self.model, self.loss_fn, self.opt, self.fast
        if self.path == "fast fused":  # forward, backward and update in one call per batch
            for xb, yb in self.batches:
                fast(xb, yb)  # type: ignore[misc]
            return
        with torch.no_grad():
            for xb, yb in self.batches:
                if fast is not None:
                    fast(xb, yb)
                else:
                    loss_fn(model(xb), yb)
                    model.backward(loss_fn.backward()[0], need_input_grad=False)
                opt.step()
                opt.zero_grad()

    def _learner(self, batches: Batches, callbacks: tuple[Any, ...] = ()) -> Any:
        """The Learner with the callbacks a training run shows: a progress bar (rendered
        into memory), metrics (accuracy) and the recorder."""

        cls = Learner
        if self.path == "fast learner":
            cls = FastLearner
        quiet = make_quiet_console()
        cbs = [Progress(quiet), Metrics(accuracy=metric_for("ce")), Recorder(), *callbacks]
        device = self.batches.x.device  # the Learner moves the model where it is told
        return cls(self.model, self.loss_fn, self.opt, batches, None, callbacks=cbs, device=device)

    def _grads_before_update(self, batches: Batches) -> dict[str, Tensor]:
        """The first batch's gradients from the compiled step without the update (a fused
        step writes none out); the weights stay as they were."""

        xb, yb = next(iter(batches))
        FastStep(self.model, self.loss_fn)(xb, yb)
        grads = handgrad_tensors(self.model, grads=True)
        self.opt.zero_grad()
        return grads

    def probe(self) -> dict[str, Tensor]:

        for m in self.model.modules():  # dropout masks cannot match across libraries
            if isinstance(m, Dropout):
                m.p = 0.0
        first = self.batches.first()
        grads: dict[str, Tensor] = {}
        losses: list[Tensor] = []
        fused_learner = None
        if self.path == "fast learner":

            class Loss(Callback):
                def after_batch(self, learn: Any) -> None:
                    losses.append(learn.loss.detach().clone())

            fused_learner = self._learner(first, (Loss(),))
            if not fused_learner.fused:
                fused_learner = None
        if fused_learner is not None:
            # No gradient is ever written out: the guard checks the compiled code's gradients
            # and the weights after the fused Learner's first step from the same weights.
            grads = self._grads_before_update(first)
            fused_learner.fit(1)
        elif self.path.endswith("learner"):

            class Capture(Callback):
                def after_backward(self, learn: Any) -> None:
                    grads.update(handgrad_tensors(learn.model, grads=True))
                    losses.append(learn.loss.detach().clone())

            self._learner(first, (Capture(),)).fit(1)
        elif self.path == "fast fused":
            # Likewise: the gradients, then the fused step whose parameters the guard checks.
            grads = self._grads_before_update(first)
            losses.append(self.fast(*next(iter(first)))[1])  # type: ignore[misc]
        else:
            xb, yb = next(iter(first))
            with torch.no_grad():
                if self.fast is not None:
                    losses.append(self.fast(xb, yb)[1])
                else:
                    losses.append(self.loss_fn(self.model(xb), yb))
                    self.model.backward(self.loss_fn.backward()[0], need_input_grad=False)
                grads = handgrad_tensors(self.model, grads=True)
                self.opt.step()
                self.opt.zero_grad()
        return grads | handgrad_tensors(self.model, grads=False) | {"loss": losses[0]}
