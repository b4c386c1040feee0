"""The built-in gradient-check cases: what ``handgrad check`` runs and the tests reuse.

A case builds a module and example inputs from a seeded generator and may give a PyTorch
reference for the forward. Add one line here for every new layer or loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import Tensor

from .gradcheck import Reference
from .layers import Linear, ReLU
from .losses import CrossEntropyLoss, MSELoss
from .module import Module, Sequential

Maker = Callable[[torch.Generator], Module]
Inputs = Callable[[torch.Generator], tuple[Tensor, ...]]


@dataclass(frozen=True)
class Case:
    name: str
    make: Maker
    inputs: Inputs
    reference: Reference | None = None


def randn(*shape: int) -> Inputs:
    """Inputs: one standard-normal float64 tensor of ``shape``."""
    return lambda g: (torch.randn(shape, generator=g, dtype=torch.float64),)


def regression(*shape: int) -> Inputs:
    """Inputs: predictions of ``shape`` and float targets with one value per prediction row."""
    return lambda g: (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape[0], generator=g, dtype=torch.float64),
    )


def classification(n: int, c: int, scale: float = 1.0) -> Inputs:
    """Inputs: (n, c) float64 logits times ``scale`` and int64 labels in [0, c)."""
    return lambda g: (
        torch.randn(n, c, generator=g, dtype=torch.float64) * scale,
        torch.randint(0, c, (n,), generator=g),
    )


def cross_entropy_reference(m: CrossEntropyLoss, x: Tensor, y: Tensor) -> Tensor:
    return TF.cross_entropy(x, y, label_smoothing=m.label_smoothing)


def linear_reference(m: Linear, x: Tensor) -> Tensor:
    bias = m.bias.as_subclass(Tensor) if m.bias is not None else None
    return TF.linear(x, m.weight.as_subclass(Tensor).t(), bias)


CASES: list[Case] = [
    Case("Linear", lambda g: Linear(7, 5, generator=g), randn(4, 7), linear_reference),
    Case("Linear batch 1", lambda g: Linear(3, 6, generator=g), randn(1, 3), linear_reference),
    Case("Linear no bias", lambda g: Linear(5, 2, bias=False, generator=g), randn(3, 5),
         linear_reference),
    Case("ReLU", lambda g: ReLU(), randn(6, 5), lambda m, x: TF.relu(x)),
    Case("MSELoss (N,1) vs (N,)", lambda g: MSELoss(), regression(8, 1),
         lambda m, x, y: TF.mse_loss(x[:, 0], y)),
    Case("CrossEntropyLoss", lambda g: CrossEntropyLoss(), classification(8, 5),
         cross_entropy_reference),
    Case("CrossEntropyLoss batch 1", lambda g: CrossEntropyLoss(), classification(1, 10),
         cross_entropy_reference),
    Case("CrossEntropyLoss logits 1e4", lambda g: CrossEntropyLoss(),
         classification(6, 4, scale=1e4), cross_entropy_reference),
    Case("CrossEntropyLoss smoothing 0.1", lambda g: CrossEntropyLoss(label_smoothing=0.1),
         classification(7, 3), cross_entropy_reference),
    Case("MLP 6-5-4-1", lambda g: Sequential(
        Linear(6, 5, generator=g), ReLU(), Linear(5, 4, generator=g), ReLU(),
        Linear(4, 1, generator=g)), randn(3, 6)),
]  # fmt: skip
