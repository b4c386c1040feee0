"""The ``Recorder``: the history of a run, one row per epoch and the loss and rate of each step.

It only records; ``handgrad.app.plots.training.plot_history`` draws what it holds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from handgrad.train.loop import Callback, Loop
from handgrad.train.reporting.averages import Metrics, detached


class Recorder(Callback):
    """History of a run: one dict per epoch (``epoch`` counted from 1, ``train_loss``,
    ``valid_loss``, ``valid_<metric>``..., ``lr`` at the epoch's last step, ``seconds``) in
    ``history``, plus every training step's loss and learning rate in ``step_loss`` and
    ``step_lr``. Its state is saved in checkpoints, so a resumed run keeps its history.
    """

    order = 20
    name = "recorder"

    def __init__(self) -> None:
        self.smoothing = 0.0  # the training loss's label smoothing (epoch lines name it)
        self.history: list[dict[str, float]] = []
        self.step_loss: list[float] = []
        self.step_lr: list[float] = []

    def before_fit(self, learn: Loop) -> None:
        if learn.epoch == 0:  # a fresh run; a resumed one keeps the history it loaded
            self.history, self.step_loss, self.step_lr = [], [], []

    def before_epoch(self, learn: Loop) -> None:
        if learn.training:
            self.smoothing = float(getattr(learn.loss_fn, "label_smoothing", 0.0) or 0.0)
            self._start = time.perf_counter()
            self._losses: list[Tensor] = []
            self._lrs: list[float] = []

    def after_batch(self, learn: Loop) -> None:
        if learn.training:
            self._losses.append(detached(learn.loss))
            self._lrs.append(float(learn.opt.lr))

    def after_epoch(self, learn: Loop) -> None:
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

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {
            "step_loss": torch.tensor(self.step_loss, dtype=torch.float32),
            "step_lr": torch.tensor(self.step_lr, dtype=torch.float64),
        }
        return tensors, {"history": self.history}

    def load_state_dict(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        self.history = [dict(row) for row in meta["history"]]
        self.step_loss = tensors["step_loss"].tolist()
        self.step_lr = tensors["step_lr"].tolist()
