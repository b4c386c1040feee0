"""Activation layers: element-wise, no parameters."""

from __future__ import annotations

from torch import Tensor

from .. import functional as F
from ..module import Module


class ReLU(Module):
    """``y = max(x, 0)``, element-wise; ``dy/dx = 1[x > 0]``. Keeps a bool mask for backward."""

    def forward(self, x: Tensor) -> Tensor:
        out, mask = F.relu_forward(x)
        self.save_for_backward(mask)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (mask,) = self.saved
        x.g = F.relu_backward(out.g, mask)
