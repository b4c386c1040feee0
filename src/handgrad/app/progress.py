"""What a training run prints as it goes: the ``Progress`` callback (a live ``rich`` bar and one
line per epoch), and the plain-line helpers the run's other messages use.

It lives in the application layer because it draws with ``rich``; its lines are the training
layer's (:func:`~handgrad.train.reporting.epoch_line`), whose plain ``ProgressPrinter`` it
replaces in the learner.
"""

from __future__ import annotations

import time
from typing import Any

from rich import progress as rp
from rich.console import Console

from handgrad.app.ui import make_console
from handgrad.train.learner import Callback, Learner
from handgrad.train.reporting import epoch_line, format_metrics

__all__ = ["Progress", "format_metrics", "say"]


def say(console: Console, text: str) -> None:
    """Print one plain line: no markup, no highlighting, never wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


class Progress(Callback):
    """A live ``rich`` progress bar per pass with the running loss, and one line per epoch.

    With ``quiet=True``, or when the console is not a terminal (a log file, a pipe, CI), there
    is no bar: only the plain line per epoch. The loss shown on the bar is read (one sync) at
    most every ``refresh`` seconds, never per batch. Without a ``console`` it writes to stdout
    (:func:`~handgrad.app.ui.make_console`). Its ``name`` is the one of the learner's default
    printer, which it replaces.
    """

    order = 50
    name = "progress"

    def __init__(
        self, console: Console | None = None, *, quiet: bool = False, refresh: float = 0.25
    ) -> None:
        self.console = console if console is not None else make_console()
        self.live = not quiet and self.console.is_terminal
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
        say(self.console, epoch_line(learn))

    def cleanup_fit(self, learn: Learner) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
