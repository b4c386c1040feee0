"""Callbacks for :class:`~handgrad.train.learner.Learner`: metrics, progress, LR schedule, recorder,
early stopping, checkpoints, a non-finite guard, augmentation and the LR finder.

Default orders (lower runs first), chosen so that each callback sees what it needs::

    -20 ValidLoss     swaps in the validation loss
    -10 LRScheduler   sets opt.lr before the batch
     -5 Augment       transforms the training batch
     10 Metrics       accumulates loss/metrics, computes them at the end of each pass
     20 Recorder      writes the epoch's history row (reads Metrics)
     25 EarlyStopping decides (reads Metrics); stops at the start of the next epoch
     40 Checkpointer  saves last/best (after EarlyStopping, so its state is in the file)
     50 Progress      draws the bar and prints the epoch line (reads Recorder)
    100 NonFiniteGuard checks loss and gradients after every other after_backward

Stateful callbacks (Recorder, EarlyStopping, Checkpointer) have ``state_dict()`` and
``load_state_dict()`` so that a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich import progress as rp
from rich.console import Console
from torch import Tensor

from handgrad.data.augment import random_shift
from handgrad.errors import HandgradError
from handgrad.nn.module import Module
from handgrad.train.learner import Callback, CancelEpochException, CancelFitException, Learner

MetricFn = Callable[[Tensor, Tensor], Tensor]
State = tuple[dict[str, Tensor], dict[str, Any]]


class NonFiniteError(HandgradError):
    """Training produced NaN or Inf (loss or gradient); no parameter was updated with it."""


# --------------------------------------------------------------------------------- metrics
class Metrics(Callback):
    """Mean loss of each pass, and the mean of each metric ``fn(preds, yb)``, weighted by batch
    size. Accumulated as tensors (no per-batch sync) and read once at the end of the pass.

    After each pass ``learn.metrics.values`` holds ``train_loss`` (training pass),
    ``valid_loss`` and ``valid_<name>`` for each metric (validation pass; training pass too with
    ``on_train=True``).

    Example: ``Metrics(accuracy=handgrad.train.metrics.accuracy)``.
    """

    order = 10
    name = "metrics"

    def __init__(self, *, on_train: bool = False, **metrics: MetricFn) -> None:
        self.fns = metrics
        self.on_train = on_train
        self.values: dict[str, float] = {}

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self.values = {}
        self._n = 0
        self._sums: dict[str, Tensor] = {}
        # Each batch's loss and size, summed once per pass: a list append per batch instead
        # of three tensor operations (measured: 35 us a batch, a tenth of a fast W2 step).
        self._losses: list[Tensor] = []
        self._sizes: list[int] = []
        self._with_metrics = self.on_train or not learn.training

    def after_batch(self, learn: Learner) -> None:
        n = learn.yb.shape[0]
        self._n += n
        self._losses.append(_detached(learn.loss))
        self._sizes.append(n)
        if self._with_metrics:
            for name, fn in self.fns.items():
                self._add(name, fn(learn.preds, learn.yb), n)

    def _add(self, name: str, value: Tensor, n: int) -> None:
        term = value.to(torch.float64) * n
        self._sums[name] = self._sums[name] + term if name in self._sums else term

    def after_epoch(self, learn: Learner) -> None:
        if not self._n:
            return
        phase = "train" if learn.training else "valid"
        losses = torch.stack(self._losses).to(torch.float64)  # (batches,)
        sizes = torch.tensor(self._sizes, dtype=torch.float64, device=losses.device)
        self._sums = {"loss": (losses * sizes).sum(), **self._sums}
        # the one sync of the pass: every sum in one transfer
        names = list(self._sums)
        means = (torch.stack([self._sums[k] for k in names]) / self._n).tolist()
        for k, v in zip(names, means, strict=True):
            self.values[f"{phase}_{k}"] = v


def _detached(loss: Tensor) -> Tensor:
    """The loss to keep: handgrad's losses record no graph, so only a tensor that does (a
    torch loss) pays for ``detach()``."""
    return loss.detach() if loss.requires_grad else loss


# -------------------------------------------------------------------------------- recorder
class Recorder(Callback):
    """History of a run: one dict per epoch (``epoch`` counted from 1, ``train_loss``,
    ``valid_loss``, ``valid_<metric>``..., ``lr`` at the epoch's last step, ``seconds``) in
    ``history``, plus every training step's loss and learning rate in ``step_loss`` and
    ``step_lr``. ``plot(path)`` draws them to a PNG.
    """

    order = 20
    name = "recorder"

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.step_loss: list[float] = []
        self.step_lr: list[float] = []

    def before_fit(self, learn: Learner) -> None:
        if learn.epoch == 0:  # a fresh run; a resumed one keeps the history it loaded
            self.history, self.step_loss, self.step_lr = [], [], []

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._start = time.perf_counter()
            self._losses: list[Tensor] = []
            self._lrs: list[float] = []

    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            self._losses.append(_detached(learn.loss))
            self._lrs.append(float(learn.opt.lr))

    def after_epoch(self, learn: Learner) -> None:
        if learn.training and self._losses:
            self.step_loss += torch.stack(self._losses).float().tolist()
            self.step_lr += self._lrs
        if learn.last_pass:
            row: dict[str, float] = {"epoch": learn.epoch + 1}
            metrics = getattr(learn, "metrics", None)
            if isinstance(metrics, Metrics):
                row.update(metrics.values)
            row["lr"] = self._lrs[-1] if self._lrs else float(learn.opt.lr)
            row["seconds"] = round(time.perf_counter() - self._start, 3)
            self.history.append(row)

    def plot(self, path: str | Path, title: str = "training") -> Path:
        from handgrad.app.plots.training import plot_history

        return plot_history(self.history, self.step_loss, self.step_lr, path, title=title)

    def state_dict(self) -> State:
        tensors = {
            "step_loss": torch.tensor(self.step_loss, dtype=torch.float32),
            "step_lr": torch.tensor(self.step_lr, dtype=torch.float64),
        }
        return tensors, {"history": self.history}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.history = [dict(row) for row in meta["history"]]
        self.step_loss = tensors["step_loss"].tolist()
        self.step_lr = tensors["step_lr"].tolist()


# ------------------------------------------------------------------------------- progress
def format_metrics(row: Mapping[str, float], sep: str = "  ") -> str:
    """``train_loss 0.2412  valid_loss 0.1533  valid_accuracy 0.9560``: losses and metrics at
    4 decimals, in the row's order."""
    skip = {"epoch", "lr", "seconds"}
    return sep.join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip)


class Progress(Callback):
    """A live ``rich`` progress bar per pass with the running loss, and one line per epoch.

    With ``quiet=True``, or when the console is not a terminal (a log file, a pipe, CI), there
    is no bar: only the plain line per epoch. The loss shown on the bar is read (one sync) at
    most every ``refresh`` seconds, never per batch.
    """

    order = 50

    def __init__(self, console: Console, *, quiet: bool = False, refresh: float = 0.25) -> None:
        self.console = console
        self.live = not quiet and console.is_terminal
        self.refresh = refresh
        self._bar: rp.Progress | None = None
        self._task: Any = None

    def before_fit(self, learn: Learner) -> None:
        if self.live:
            self._bar = rp.Progress(
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TextColumn("{task.fields[status]}"),
                rp.TimeElapsedColumn(),
                rp.TimeRemainingColumn(),
                console=self.console,
                transient=True,
                # Rendering the bar costs about a millisecond: as often as it advances.
                refresh_per_second=1 / self.refresh,
            )
            self._bar.start()

    def before_epoch(self, learn: Learner) -> None:
        if self._bar is None:
            return
        phase = "train" if learn.training else "valid"
        total = len(learn.dl) if hasattr(learn.dl, "__len__") else None  # type: ignore[arg-type]
        self._task = self._bar.add_task(
            f"epoch {learn.epoch + 1}/{learn.n_epochs} {phase}", total=total, status=""
        )
        self._last = time.perf_counter()
        self._pending = 0

    def after_batch(self, learn: Learner) -> None:
        if self._bar is None:
            return
        # The bar is redrawn a few times a second: advance it (a locked update of rich's task
        # table, 26 us) only that often, not on every batch.
        self._pending += 1
        now = time.perf_counter()
        if now - self._last >= self.refresh:
            self._last = now
            status = {"status": f"loss {learn.loss.item():.4f}"} if learn.training else {}
            self._bar.update(self._task, advance=self._pending, **status)
            self._pending = 0

    def cleanup_epoch(self, learn: Learner) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=self._pending)
            self._pending = 0
            self._bar.remove_task(self._task)
            self._task = None

    def after_epoch(self, learn: Learner) -> None:
        if not learn.last_pass:
            return
        recorder = getattr(learn, "recorder", None)
        if isinstance(recorder, Recorder) and recorder.history:
            row = recorder.history[-1]
            tail = f"  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
        else:
            metrics = getattr(learn, "metrics", None)
            row = metrics.values if isinstance(metrics, Metrics) else {}
            tail = ""
        width = len(str(learn.n_epochs))
        self.console.print(
            f"epoch {learn.epoch + 1:>{width}}/{learn.n_epochs}  {format_metrics(row)}{tail}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def cleanup_fit(self, learn: Learner) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ------------------------------------------------------------------------------ schedules
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


# ---------------------------------------------------------------------------- augmentation
class Augment(Callback):
    """Random shifts of up to ``max_shift`` pixels for each training image (validation
    batches are untouched). The random numbers of epoch ``e`` come from a generator seeded with
    ``(seed, e)``, so a resumed run draws exactly what the straight run drew.
    """

    order = -5

    def __init__(
        self,
        max_shift: int = 2,
        *,
        seed: int = 0,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        fill: float = 0.0,
    ) -> None:
        self.max_shift, self.seed, self.image_shape, self.fill = max_shift, seed, image_shape, fill

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + learn.epoch + 1)

    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            learn.xb = random_shift(
                learn.xb,
                self.max_shift,
                image_shape=self.image_shape,
                fill=self.fill,
                generator=self._gen,
            )


# -------------------------------------------------------------------------- early stopping
def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


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
        value = _metric(learn, self.monitor)
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, learn.epoch + 1, 0
        else:
            self.wait += 1
            self.stop = self.wait >= self.patience

    def state_dict(self) -> State:
        meta = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        return {}, meta | {"stop": self.stop}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = meta["best"], meta["best_epoch"]
        self.wait, self.stop = meta["wait"], meta["stop"]


def _metric(learn: Learner, name: str) -> float:
    metrics = getattr(learn, "metrics", None)
    values = metrics.values if isinstance(metrics, Metrics) else {}
    if name not in values:
        raise HandgradError(
            f"no metric {name!r} to monitor (have: {', '.join(values) or 'none'}); "
            "add a Metrics callback or monitor one of those"
        )
    return values[name]


# ----------------------------------------------------------------------------- checkpoints
class Checkpointer(Callback):
    """After every epoch, save ``last.safetensors`` (with everything needed to resume) and,
    when ``monitor`` improved, ``best.safetensors``, in ``directory``; each with its JSON
    sidecar (see :mod:`handgrad.train.checkpoint`). ``info`` (model name and arguments, config,
    data description) is stored in every sidecar.
    """

    order = 40
    name = "checkpointer"

    def __init__(
        self,
        directory: str | Path,
        info: Mapping[str, Any],
        *,
        monitor: str = "valid_loss",
        mode: str = "min",
        save_last: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Checkpointer: mode must be 'min' or 'max', got {mode!r}")
        self.directory = Path(directory)
        self.info = dict(info)
        self.monitor, self.mode, self.save_last = monitor, mode, save_last
        self.best: float | None = None
        self.best_epoch = 0

    @property
    def last_path(self) -> Path:
        return self.directory / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.safetensors"

    def before_fit(self, learn: Learner) -> None:
        if learn.epoch == 0:
            self.best, self.best_epoch = None, 0

    def after_epoch(self, learn: Learner) -> None:
        if not learn.last_pass:
            return
        from handgrad.train.checkpoint import save_learner

        value = _metric(learn, self.monitor)
        improved = _improved(value, self.best, self.mode, 0.0)
        if improved:
            self.best, self.best_epoch = value, learn.epoch + 1
        if self.save_last:
            save_learner(self.last_path, learn, self.info)
        if improved:
            save_learner(self.best_path, learn, self.info)

    def state_dict(self) -> State:
        return {}, {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = meta["best"], meta["best_epoch"]


# ------------------------------------------------------------------------- non-finite guard
class NonFiniteGuard(Callback):
    """Stop training, before the optimizer step, when the loss or any gradient is NaN or Inf.

    Raises :class:`NonFiniteError` naming the step, the parameter whose gradient first went
    non-finite (in backward order, i.e. the one closest to the output) or, for a non-finite
    loss, the first layer whose output was non-finite. Runs last among ``after_backward``
    callbacks, so it sees the gradients the optimizer would use. The test is one fused
    reduction and one sync per batch: the sum of the loss and of every gradient is finite
    exactly when none of them holds NaN or Inf (barring an overflow of the sum itself, which
    falls back to the exact per-tensor test).
    """

    order = 100

    def before_fit(self, learn: Learner) -> None:
        self._params = list(learn.model.named_parameters())

    def after_backward(self, learn: Learner) -> None:
        grads = [p.g for _, p in self._params if p.g is not None]
        total = learn.loss.detach().sum()
        if grads:
            total = total + torch.stack([g.sum() for g in grads]).sum()
        if bool(torch.isfinite(total)):
            return
        problem = self._diagnose(learn)
        if problem:
            raise NonFiniteError(problem)

    def _diagnose(self, learn: Learner) -> str | None:
        where = f"step {learn.step + 1} (epoch {learn.epoch + 1}, batch {learn.batch_idx + 1})"
        fix = (
            "no parameter was updated with it; lower the learning rate (--lr), or check the "
            "data for NaN/Inf"
        )
        bad = [
            (name, int((~torch.isfinite(p.g)).sum()))
            for name, p in self._params
            if p.g is not None and not bool(torch.isfinite(p.g).all())
        ]
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


def _first_non_finite_output(learn: Learner) -> str:
    """Re-run the batch forward (eval mode, nothing saved) and name the first layer whose
    output holds NaN/Inf."""
    if not bool(torch.isfinite(learn.xb).all()):
        return "the input batch itself holds NaN/Inf"
    params = [n for n, p in learn.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if params:
        return f"parameter {params[0]} is already NaN/Inf"
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


# ------------------------------------------------------------------------------ LR finder
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

    def plot(self, path: str | Path, title: str = "learning-rate finder") -> Path:
        from handgrad.app.plots.training import plot_lr_find

        return plot_lr_find(self.lrs, self.losses, self.smoothed, self.suggestion, path, title)


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
