"""``Checkpointer``: the last and the best epoch of a run, saved as it trains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from handgrad.train.callbacks.metrics import improved, metric_value
from handgrad.train.learner import Callback, Learner


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
        # imported here: safetensors loads when a checkpoint is first written, not on import
        from handgrad.train.checkpoint import save_learner

        value = metric_value(learn, self.monitor)
        better = improved(value, self.best, self.mode)
        if better:
            self.best, self.best_epoch = value, learn.epoch + 1
        if self.save_last:
            save_learner(self.last_path, learn, self.info)
        if better:
            save_learner(self.best_path, learn, self.info)

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = meta["best"], meta["best_epoch"]
