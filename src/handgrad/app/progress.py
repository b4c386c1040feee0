"""What a training run prints as it goes: the ``Progress`` callback (a live ``rich`` bar and one
line per epoch), and the plain-line helpers the run's other messages use.

It lives in the application layer because it draws with ``rich``; the training layer only
records (``Metrics``, ``Recorder``) what it shows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import progress as rp
from rich.console import Console

from handgrad.train.callbacks import Metrics, Recorder
from handgrad.train.learner import Callback, Learner


def say(console: Console, text: str) -> None:
    """Print one plain line: no markup, no highlighting, never wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


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
                # Redraw only as often as the bar advances: rendering is not free.
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
        # table) only that often, not on every batch (benchmarks/RESULTS.md, "What each
        # change bought").
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
        say(
            self.console,
            f"epoch {learn.epoch + 1:>{width}}/{learn.n_epochs}  {format_metrics(row)}{tail}",
        )

    def cleanup_fit(self, learn: Learner) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
