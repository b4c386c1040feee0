"""``ProgressPrinter``: a run's progress as plain text, one line per epoch.

On a terminal a status line (pass, batches done, running loss) is rewritten in place while an
epoch runs; elsewhere (a pipe, a log file, a notebook) only the epoch lines are written. The
command line draws the same lines with ``rich`` instead (:mod:`handgrad.app.progress`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

import torch

from handgrad.train.loop import Callback, Loop
from handgrad.train.reporting.averages import Metrics


def format_metrics(row: Mapping[str, float], sep: str = "  ") -> str:
    """``train_loss 0.2412  valid_loss 0.1533  valid_accuracy 0.9560``: losses and metrics at
    4 decimals, in the row's order."""
    skip = {"epoch", "lr", "seconds"}
    return sep.join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip)


def epoch_line(learn: Loop) -> str:
    """``epoch 2/5  train_loss ...  valid_loss ...  lr 1.00e-01  0.8s``: the finished epoch's
    row from ``learn.recorder`` (or, without one, the values of ``learn.metrics``). With label
    smoothing the training loss reads ``train_loss(smoothed)``: it is not comparable with
    ``valid_loss``, measured without it."""
    recorder = getattr(learn, "recorder", None)
    history = getattr(recorder, "history", None)
    if history:
        row = history[-1]
        tail = f"  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    else:
        metrics = getattr(learn, "metrics", None)
        row = metrics.values if isinstance(metrics, Metrics) else {}
        tail = ""
    smoothing = getattr(recorder, "smoothing", getattr(learn.loss_fn, "label_smoothing", 0.0))
    if smoothing and "train_loss" in row:
        # the training loss includes the smoothing term, the validation loss does not: say so
        row = {("train_loss(smoothed)" if k == "train_loss" else k): v for k, v in row.items()}
    width = len(str(learn.n_epochs))
    return f"epoch {learn.epoch + 1:>{width}}/{learn.n_epochs}  {format_metrics(row)}{tail}"


def is_main_process() -> bool:
    """False on every rank but 0 of a ``torch.distributed`` run: one process prints."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


class ProgressPrinter(Callback):
    """Write :func:`epoch_line` after each epoch to ``stream`` (default: ``sys.stdout`` when
    the fit starts).

    Args:
        stream: where to write; any object with ``write`` and ``flush``.
        live: rewrite a status line in place during each pass; default: when ``stream`` is a
            terminal. The running loss on it is read (one sync) at most every ``refresh``
            seconds, never per batch.
    """

    order = 50
    name = "progress"

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, refresh: float = 0.25
    ) -> None:
        self.stream, self.live, self.refresh = stream, live, refresh
        self._out: TextIO = sys.stdout
        self._on = self._live = False
        self._shown = 0

    def before_fit(self, learn: Loop) -> None:
        self._out = self.stream or sys.stdout
        self._on = is_main_process()
        live = self.live if self.live is not None else _is_terminal(self._out)
        self._live = self._on and live

    def before_epoch(self, learn: Loop) -> None:
        self._done, self._last = 0, time.perf_counter()
        self._total = len(learn.dl) if hasattr(learn.dl, "__len__") else None  # type: ignore[arg-type]

    def after_batch(self, learn: Loop) -> None:
        if not self._live:
            return
        self._done += 1
        now = time.perf_counter()
        if now - self._last >= self.refresh:
            self._last = now
            phase = "train" if learn.training else "valid"
            of = f"/{self._total}" if self._total is not None else ""
            loss = f"  loss {learn.loss.item():.4f}" if learn.training else ""
            self._status(f"epoch {learn.epoch + 1}/{learn.n_epochs} {phase} {self._done}{of}{loss}")

    def cleanup_epoch(self, learn: Loop) -> None:
        if self._shown:
            self._status("")

    def after_epoch(self, learn: Loop) -> None:
        self.cleanup_epoch(learn)  # the epoch line replaces the status line
        if self._on and learn.last_pass:
            self._out.write(epoch_line(learn) + "\n")
            self._out.flush()

    def _status(self, text: str) -> None:
        # Overwrite the previous status: back to the line's start, pad over what was longer.
        self._out.write("\r" + text.ljust(self._shown) + ("\r" if not text else ""))
        self._out.flush()
        self._shown = len(text)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
