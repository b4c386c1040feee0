"""Small stand-ins for the training tests: a momentum SGD, a seeded loader and a stop.

They exist so the Learner, callbacks and checkpoints are tested on their own, with tiny data;
the library's optimizers and DataLoader are tested in their own files.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from handgrad import Linear, ReLU, Sequential
from handgrad.nn.module import Module
from handgrad.train.learner import Callback, CancelFitException, Learner


class MomentumSGD:
    """``v = mu v + g; p -= lr v`` with ``state_dict`` in the optimizer contract's shape."""

    def __init__(self, params: list, lr: float, momentum: float = 0.9) -> None:
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.bufs: list[Tensor | None] = [None] * len(self.params)
        self.steps = 0

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.g is None:
                continue
            buf = self.bufs[i]
            self.bufs[i] = p.g.clone() if buf is None else buf.mul_(self.momentum).add_(p.g)
            p.sub_(self.lr * self.bufs[i])
        self.steps += 1

    def zero_grad(self) -> None:
        for p in self.params:
            p.g = None

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"buf.{i}": b for i, b in enumerate(self.bufs) if b is not None}
        return tensors, {"lr": self.lr, "momentum": self.momentum, "steps": self.steps}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.lr, self.momentum, self.steps = meta["lr"], meta["momentum"], meta["steps"]
        self.bufs = [
            tensors[f"buf.{i}"].clone() if f"buf.{i}" in tensors else None
            for i in range(len(self.params))
        ]


class SeededLoader:
    """Whole-batch slices; the shuffle order is a function of (seed, epoch) only."""

    def __init__(self, x: Tensor, y: Tensor, bs: int, *, shuffle: bool = False, seed: int = 0):
        self.x, self.y, self.bs, self.shuffle, self.seed = x, y, bs, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.x) // self.bs)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(0, n, self.bs):
            idx = order[i : i + self.bs]
            yield self.x[idx], self.y[idx]


def regression_data(n: int = 96, features: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``y = x @ w + noise`` with one fixed ``w``; ``seed`` draws other samples of it."""
    w = torch.randn(features, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, x @ w + 0.05 * torch.randn(n, generator=g)


def small_net(features: int = 6, hidden: int = 8, seed: int = 0) -> Module:
    g = torch.Generator().manual_seed(seed)
    return Sequential(
        Linear(features, hidden, generator=g),
        ReLU(),
        Linear(hidden, 1, nonlinearity="linear", generator=g),
    )


class StopAfter(Callback):
    """Interrupt a run at the end of an epoch, as a crash or Ctrl-C after a save would."""

    order = 99  # after the Checkpointer (40): the epoch's checkpoint is on disk

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def after_epoch(self, learn: Learner) -> None:
        if learn.last_pass and learn.epoch + 1 == self.epochs:
            raise CancelFitException()
