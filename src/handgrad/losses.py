"""Losses: modules whose output is a scalar and whose second argument is the target."""

from __future__ import annotations

from torch import Tensor

from . import functional as F
from .module import Module


class MSELoss(Module):
    """Mean squared error ``L = mean((input - target)^2)``; ``dL/dinput = 2 (input - target) / M``.

    ``input`` of shape (N, 1) against ``target`` of shape (N,) is accepted (the lesson's
    regression head); otherwise both must have the same number of elements.
    """

    no_grad_args = (1,)

    def forward(self, inp: Tensor, target: Tensor) -> Tensor:
        loss, diff = F.mse_forward(inp, target)
        self.save_for_backward(diff)
        return loss

    def bwd(self, out: Tensor, inp: Tensor, target: Tensor) -> None:
        (diff,) = self.saved
        inp.g = F.mse_backward(out.g, diff, inp.shape)
