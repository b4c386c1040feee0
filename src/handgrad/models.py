"""Models by name: ``build_model("mlp", hidden=(256, 128))``.

Each builder takes the input size, the number of classes and a generator (reproducible init),
and returns a :class:`~handgrad.module.Module` mapping (N, in_features) to (N, outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .layers import Linear, ReLU
from .module import Module, Sequential


def lesson(
    in_features: int = 784, n_classes: int = 10, *, generator: torch.Generator | None = None
) -> Module:
    """The lesson's 784-50-1 regression net (trained with MSE on the digit value)."""
    del n_classes  # one output: the lesson regresses the label
    return Sequential(
        Linear(in_features, 50, generator=generator),
        ReLU(),
        Linear(50, 1, nonlinearity="linear", generator=generator),
    )


def mlp(
    in_features: int = 784,
    n_classes: int = 10,
    *,
    hidden: Sequence[int] = (256, 128),
    generator: torch.Generator | None = None,
) -> Module:
    """Linear-ReLU blocks of widths ``hidden``, then a linear classifier head (logits)."""
    layers: list[Module] = []
    width = in_features
    for h in hidden:
        layers += [Linear(width, h, generator=generator), ReLU()]
        width = h
    layers.append(Linear(width, n_classes, nonlinearity="linear", generator=generator))
    return Sequential(*layers)


MODELS: dict[str, Callable[..., Module]] = {"lesson": lesson, "mlp": mlp}


def build_model(name: str, **kwargs: object) -> Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
