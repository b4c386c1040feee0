"""Inverted dropout: zero each value with probability ``p`` in training, scale the rest by
``1 / (1 - p)`` so the expected output equals the input; in evaluation, the identity."""

from __future__ import annotations

import torch
from torch import Tensor


def dropout_forward(
    x: Tensor, p: float, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)`` drawn per element.

    The mask comes from ``generator``, or from torch's global generator when it is ``None`` (so
    ``torch.manual_seed`` makes it reproducible, and ``handgrad.gradcheck``, which re-seeds
    before every forward pass, sees the same mask each time). Returns ``y`` and the bool mask
    (1 byte per element). ``p = 1`` drops everything (``y = 0``).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    if p == 1.0:
        return torch.zeros_like(x), keep
    return x * keep * (1.0 / (1.0 - p)), keep


def dropout_backward(dout: Tensor, keep: Tensor, p: float) -> Tensor:
    """``dx = dy * mask / (1 - p)``: a dropped value passed nothing on, so it gets no gradient."""
    if p == 1.0:
        return torch.zeros_like(dout)
    return dout * keep * (1.0 / (1.0 - p))
