"""The bench's data: MNIST-shaped random rows, and the batches every variant sees in order."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


class Batches:
    """``(xb, yb)`` slices of ``x`` and ``y`` in order: the same batches for every variant."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y, bs = self.x, self.y, self.batch_size
        for i in range(0, len(x), bs):
            yield x[i : i + bs], y[i : i + bs]

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def first(self) -> Batches:
        return Batches(self.x[: self.batch_size], self.y[: self.batch_size], self.batch_size)


def make_data(
    rows: int, seed: int, *, regression: bool = False, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """MNIST-shaped rows: pixels uniform in [0, 1], labels 0..9 (floats for regression), drawn
    on the CPU (the same numbers on every device) and copied to ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 784, generator=g)  # (N, 784)
    y = torch.randint(0, 10, (rows,), generator=g)  # (N,)
    return x.to(device), (y.float() if regression else y).to(device)
