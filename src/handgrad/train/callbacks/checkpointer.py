"""``Checkpointer``: the last and the best epoch of a run, saved as it trains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handgrad.errors import HandgradError
from handgrad.train.callbacks.metrics import improved, metric_value
from handgrad.train.learner import Callback, Learner


class Checkpointer(Callback):
    """After every epoch, save ``last.safetensors`` (with everything needed to resume) and,
    when ``monitor`` improved, ``best.safetensors``, in ``directory``; each with its JSON
    sidecar (see :mod:`handgrad.train.checkpoint`). ``info`` (model name and arguments, config,
    data description) is stored in every sidecar.

    The best so far is recorded in one place only, ``best.json`` (its ``metrics`` and
    ``epoch``), written with the weights it describes, and ``best`` is saved before ``last``:
    a run killed at any moment never names a best that no file holds. A resumed run
    (``fit`` from an epoch > 0) takes its best from ``best.json`` and first tidies what an
    interrupted save left (see :func:`~handgrad.train.checkpoint.tidy_checkpoint`); what it
    did is listed in ``notes``.
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
        self.notes: list[str] = []

    @property
    def last_path(self) -> Path:
        return self.directory / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.safetensors"

    def before_fit(self, learn: Learner) -> None:
        self.best, self.best_epoch, self.notes = None, 0, []
        if learn.epoch > 0:
            self._resume()

    def _resume(self) -> None:
        # imported here: safetensors loads when a checkpoint is first used, not on import
        from handgrad.train.checkpoint import load_checkpoint, tidy_checkpoint

        for path in (self.best_path, self.last_path):
            self.notes += tidy_checkpoint(path)
        if not self.best_path.exists():
            return
        try:
            info = load_checkpoint(self.best_path).info
            self.best, self.best_epoch = float(info["metrics"][self.monitor]), int(info["epoch"])
        except (HandgradError, KeyError, TypeError, ValueError) as exc:
            self.notes.append(f"{self.best_path.name} is not usable ({exc}); it will be replaced")

    def after_epoch(self, learn: Learner) -> None:
        if not learn.last_pass:
            return
        from handgrad.train.checkpoint import save_learner

        value = metric_value(learn, self.monitor)
        if improved(value, self.best, self.mode):
            save_learner(self.best_path, learn, self.info)
            self.best, self.best_epoch = value, learn.epoch + 1
        if self.save_last:
            save_learner(self.last_path, learn, self.info)
