"""The ``Metrics`` callback: the mean loss and metrics of each pass, weighted by batch size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.module import Module
from handgrad.train.loop import Callback, Loop
from handgrad.train.recipes import metric_for

MetricFn = Callable[[Tensor, Tensor], Tensor]


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

    def before_epoch(self, learn: Loop) -> None:
        if learn.training:
            self.values = {}
        self._n = 0
        self._sums: dict[str, Tensor] = {}
        # Each batch's loss and size, summed once per pass: a list append per batch is cheaper
        # than tensor operations per batch (benchmarks/RESULTS.md, "What each change bought").
        self._losses: list[Tensor] = []
        self._sizes: list[int] = []
        self._with_metrics = self.on_train or not learn.training

    def after_batch(self, learn: Loop) -> None:
        n = learn.yb.shape[0]
        self._n += n
        self._losses.append(detached(learn.loss))
        self._sizes.append(n)
        if self._with_metrics:
            for name, fn in self.fns.items():
                self._add(name, fn(learn.preds, learn.yb), n)

    def _add(self, name: str, value: Tensor, n: int) -> None:
        term = value.to(torch.float64) * n
        self._sums[name] = self._sums[name] + term if name in self._sums else term

    def after_epoch(self, learn: Loop) -> None:
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


def detached(loss: Tensor) -> Tensor:
    """The loss to keep: handgrad's losses record no graph, so only a tensor that does (a
    torch loss) pays for ``detach()``."""
    return loss.detach() if loss.requires_grad else loss


def default_metrics(loss_fn: Module) -> dict[str, MetricFn]:
    """The metrics a learner reports unless told otherwise: accuracy when ``loss_fn`` says the
    task is classification (a cross-entropy loss), nothing beyond the loss otherwise."""
    return {"accuracy": metric_for("ce")} if isinstance(loss_fn, CrossEntropyLoss) else {}
