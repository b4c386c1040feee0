"""Element-wise activations."""

from __future__ import annotations

from torch import Tensor


def relu_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = max(x, 0)``; the cache is the bool mask ``x > 0`` (1 byte per element, not 4)."""
    out = x.clamp_min(0.0)
    return out, out > 0


def relu_backward(dout: Tensor, mask: Tensor) -> Tensor:
    """``dy/dx = 1`` where ``x > 0`` else ``0`` (the subgradient 0 is taken at ``x = 0``)."""
    return dout * mask
