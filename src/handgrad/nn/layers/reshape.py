"""Shape-only layers: ``Flatten``, ``Reshape`` and ``Identity``. The backward only restores
the shape (or, for ``Identity``, passes the gradient through)."""

from __future__ import annotations

import math

from torch import Tensor

from handgrad.nn.module import Module


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...): one row per sample. A view for contiguous input."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = out.g.reshape(x.shape)


class Reshape(Module):
    """(N, ...) -> (N, *shape): each sample viewed in a new shape (the batch axis is kept).

    Example:
        >>> Reshape(1, 28, 28)(torch.zeros(64, 784)).shape   # rows of pixels -> images
        torch.Size([64, 1, 28, 28])
    """

    def __init__(self, *shape: int) -> None:
        if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"Reshape needs positive sizes, got {shape}")
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        per_sample = math.prod(x.shape[1:])
        if per_sample != math.prod(self.shape):
            raise ValueError(
                f"{self._label()}: each sample of the input {tuple(x.shape)} has {per_sample} "
                f"values, but shape {self.shape} needs {math.prod(self.shape)}"
            )
        return x.reshape(x.shape[0], *self.shape)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = out.g.reshape(x.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


class Identity(Module):
    """``y = x``; ``dx = dy``. A placeholder: e.g. the ``cnn`` model puts one where its
    separate ``ReLU`` used to be, so that layer numbers, and the state-dict names of
    checkpoints saved before the fused ``BatchNormReLU2d``, stay the same."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view_as(x)  # a new tensor object, so input and output keep their own .g

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = out.g
