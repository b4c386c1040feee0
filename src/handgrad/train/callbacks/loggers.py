"""Loggers: each epoch's history row (``learn.recorder``) to a CSV file, or to TensorBoard.

``make_loggers("csv,tensorboard", run_dir)`` builds them for a run folder, as ``--logger``
asks: ``history.csv`` and ``tensorboard/``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from handgrad._io import write_text
from handgrad.errors import HandgradError
from handgrad.train.learner import Callback, Learner

#: The names ``make_loggers`` accepts.
LOGGERS = ("csv", "tensorboard")


def _history(learn: Learner) -> list[dict[str, float]]:
    recorder = getattr(learn, "recorder", None)
    return list(getattr(recorder, "history", []))


class CSVLogger(Callback):
    """Write the run's history, one row per epoch, to ``path`` after every epoch.

    The whole file is rewritten atomically each time (a killed run leaves the last complete
    table, never half a line), from the recorder's history: a resumed run's file holds the
    epochs before the resume too. Columns: every key any row has, in first-seen order.
    """

    order = 22  # after the Recorder (20) has written the epoch's row

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def after_epoch(self, learn: Learner) -> None:
        rows = _history(learn)
        if learn.last_pass and rows:
            write_text(self.path, history_csv(rows))


def history_csv(rows: list[dict[str, float]]) -> str:
    """``rows`` as CSV text with a header line (a missing value is an empty field)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class TensorBoardLogger(Callback):
    """Each epoch's losses, metrics and learning rate as TensorBoard scalars in ``log_dir``
    (step: the epoch, counted from 1), through ``torch.utils.tensorboard``.

    Needs the ``tensorboard`` package: without it, creating the logger raises a
    :class:`~handgrad.errors.HandgradError` (before any training).
    """

    order = 23

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = _summary_writer()
        self._writer: Any = None

    def before_fit(self, learn: Learner) -> None:
        self._writer = self._writer_class(log_dir=str(self.log_dir))

    def after_epoch(self, learn: Learner) -> None:
        rows = _history(learn)
        if not (learn.last_pass and rows and self._writer is not None):
            return
        row = rows[-1]
        step = int(row.get("epoch", learn.epoch + 1))
        for key, value in row.items():
            if key != "epoch":
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def cleanup_fit(self, learn: Learner) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise HandgradError(
            "tensorboard logging: the tensorboard package is not installed; "
            "pip install tensorboard, or log to csv only"
        ) from None
    return SummaryWriter


def make_loggers(names: str, run_dir: str | os.PathLike[str]) -> list[Callback]:
    """The loggers ``names`` lists (comma-separated, from :data:`LOGGERS`; ``""`` for none)
    for the run folder ``run_dir``: ``history.csv`` and ``tensorboard/``."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in LOGGERS]
    if unknown:
        raise HandgradError(
            f"--logger: unknown logger {', '.join(unknown)}; choose from {', '.join(LOGGERS)}"
        )
    run = Path(run_dir)
    loggers: list[Callback] = []
    if "csv" in wanted:
        loggers.append(CSVLogger(run / "history.csv"))
    if "tensorboard" in wanted:
        loggers.append(TensorBoardLogger(run / "tensorboard"))
    return loggers
