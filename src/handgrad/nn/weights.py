"""Drawing one weight tensor: the scale a layer's first forward pass starts from.

The lesson drew weights from ``randn`` (std 1): each output of a 784-input linear layer sums
784 products, so its standard deviation is about ``sqrt(784 * E[x^2])`` and grows layer after
layer. Kaiming/He (``std = gain / sqrt(fan_in)``, ``gain = sqrt(2)`` for ReLU) keeps the
variance of activations near 1 through ReLU layers; Xavier/Glorot
(``std = gain * sqrt(2 / (fan_in + fan_out))``) does so for tanh and sigmoid.

``Linear`` and ``Conv2d`` draw their weights here; :mod:`handgrad.nn.init`, above the layers,
applies the same rules to a whole built network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Gains that keep the forward variance unchanged through each nonlinearity.
GAINS = {"linear": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "sigmoid": 1.0}
INITS = ("kaiming", "xavier", "randn", "zeros")


def gain(nonlinearity: str, leak: float = 0.0) -> float:
    """Gain for ``nonlinearity``; a leaky ReLU with slope ``leak`` gets sqrt(2 / (1 + leak^2))."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + leak**2))
    if nonlinearity not in GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose from {sorted(GAINS)}")
    return GAINS[nonlinearity]


def init_weight(
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    method: str = "kaiming",
    *,
    nonlinearity: str = "relu",
    leak: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A weight tensor of ``shape`` drawn by ``method``:

    - ``kaiming``: ``N(0, gain^2 / fan_in)``;
    - ``xavier``: ``N(0, gain^2 * 2 / (fan_in + fan_out))``;
    - ``randn``: ``N(0, 1)``, the lesson's choice (kept for comparison, not for training);
    - ``zeros``.
    """
    if method == "zeros":
        return torch.zeros(shape, device=device, dtype=dtype)
    w = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if method == "randn":
        return w
    if method == "kaiming":
        std = gain(nonlinearity, leak) / math.sqrt(fan_in)
    elif method == "xavier":
        std = gain(nonlinearity, leak) * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        raise ValueError(f"unknown init {method!r}; choose from {INITS}")
    return w.mul_(std)
