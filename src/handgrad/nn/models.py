"""Models by name: ``build_model("mlp", hidden=(256, 128))``.

Each builder takes the input size, the number of classes and a generator (reproducible init),
and returns a :class:`~handgrad.nn.module.Module` mapping (N, in_features) to (N, outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from handgrad.nn.functional.conv import Method
from handgrad.nn.layers import (
    BatchNorm2d,
    BatchNormReLU2d,
    Conv2d,
    Dropout,
    GlobalAvgPool,
    Identity,
    Linear,
    ReLU,
    ResBlock,
    Reshape,
)
from handgrad.nn.module import Module, Sequential


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
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> Module:
    """Linear-ReLU blocks of widths ``hidden`` (each followed by ``Dropout(dropout)`` when it is
    above 0), then a linear classifier head (logits)."""
    if not hidden or min(hidden) < 1:
        raise ValueError(f"mlp: hidden widths must be positive, got {list(hidden)}")
    layers: list[Module] = []
    width = in_features
    for h in hidden:
        layers += [Linear(width, h, generator=generator), ReLU()]
        if dropout:
            layers.append(Dropout(dropout))
        width = h
    layers.append(Linear(width, n_classes, nonlinearity="linear", generator=generator))
    return Sequential(*layers)


def cnn(
    in_features: int = 784,
    n_classes: int = 10,
    *,
    channels: Sequence[int] = (16, 32, 64, 128, 128),
    strides: Sequence[int] = (1, 2, 2, 2, 1),
    kernel_size: int = 3,
    dropout: float = 0.1,
    method: Method = "auto",
    fused: bool = True,
    generator: torch.Generator | None = None,
) -> Module:
    """A small all-convolutional net for 28x28 one-channel images given as (N, 784) rows.

    The rows are reshaped to (N, 1, 28, 28) inside the model, then each block is
    ``Conv2d(3x3, no bias) -> BatchNorm2d -> ReLU``; stride-2 blocks halve the resolution
    instead of pooling layers (28 -> 14 -> 7 -> 4 with the defaults). A global average pool,
    dropout and a linear head give the logits::

        (N, 784) -> (N, 1, 28, 28) -> 16@28x28 -> 32@14x14 -> 64@7x7 -> 128@4x4 -> 128@4x4
                 -> (N, 128) -> (N, 10)

    About 246,000 parameters and 5.5 million multiply-adds per image forward with the
    defaults. The convolutions have no bias (the batch norm's ``beta`` plays that role) and
    Kaiming-initialised weights (they feed ReLUs); the head is initialised with gain 1.

    ``fused=True`` (the default) computes each block's batch norm and ReLU in one layer,
    :class:`~handgrad.nn.layers.BatchNormReLU2d` (the same numbers, fewer passes over memory
    and one activation fewer kept for the backward), followed by an ``Identity`` where the
    ``ReLU`` was: block ``i`` stays layers ``3i+1..3i+3``, so the state-dict names, and every
    checkpoint saved either way, are the same. ``fused=False`` builds the separate layers.
    """
    side = _image_side("cnn", in_features, channels, strides)
    layers: list[Module] = [Reshape(1, side, side)]
    width = 1
    for out, stride in zip(channels, strides, strict=True):
        # keep_cols=False: a layer lowered to im2col (the first one, on 1-channel images) does
        # not keep its columns (9x its input) until the backward, but rebuilds them there:
        # less memory alive through the whole backward pass for one more copy (the trade is
        # measured in benchmarks/results-cnnperf.md).
        layers += [
            Conv2d(width, out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
                   method=method, keep_cols=False, generator=generator),
            *([BatchNormReLU2d(out), Identity()] if fused else [BatchNorm2d(out), ReLU()]),
        ]  # fmt: skip
        width = out
    layers.append(GlobalAvgPool())
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Linear(width, n_classes, nonlinearity="linear", generator=generator))
    return Sequential(*layers)


def resnet(
    in_features: int = 784,
    n_classes: int = 10,
    *,
    stem: int = 16,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (1, 2, 2, 2),
    dropout: float = 0.1,
    zero_init: bool = True,
    method: Method = "auto",
    channels_last: bool = True,
    generator: torch.Generator | None = None,
) -> Module:
    """A small residual network for 28x28 one-channel images given as (N, 784) rows.

    A stem ``Conv2d(3x3, no bias) -> BatchNormReLU2d``, then one
    :class:`~handgrad.nn.layers.ResBlock` per entry of ``channels`` (stride-2 blocks halve the
    resolution, their skip path a 1x1 projection), a global average pool, dropout and a linear
    head::

        (N, 784) -> (N, 1, 28, 28) -> 16@28x28 -> [16@28x28 -> 32@14x14 -> 64@7x7 -> 128@4x4]
                 -> (N, 128) -> (N, 10)

    About 309,000 parameters and 13.0 million multiply-adds per image forward with the
    defaults (``print(model.summary((784,)))`` shows both), 2.4 times the ``cnn``'s work.

    Init: the convolutions are Kaiming-initialised (they feed ReLUs), the head with gain 1;
    batch norms start at ``gamma = 1, beta = 0`` except each block's second one, whose
    ``gamma`` starts at 0 with ``zero_init=True`` (the default): every block then starts as
    its skip path, so the untrained network is a shallow one and the residual branches grow
    from zero (Goyal et al. 2017).

    Memory: with ``channels_last`` (the default) the convolutions and the batch norms after
    them compute on channels-last (NHWC) tensors, which oneDNN's CPU convolutions run faster
    at these widths (benchmarks/RESULTS.md, "Residual networks"); the values, the parameters
    and the checkpoints are the same either way.
    """
    side = _image_side("resnet", in_features, channels, strides)
    layers: list[Module] = [
        Reshape(1, side, side),
        Conv2d(1, stem, 3, padding=1, bias=False, method=method, keep_cols=False,
               channels_last=channels_last, generator=generator),
        BatchNormReLU2d(stem),
    ]  # fmt: skip
    width = stem
    for out, stride in zip(channels, strides, strict=True):
        block = ResBlock(width, out, stride, method=method, channels_last=channels_last,
                         zero_init=zero_init, generator=generator)  # fmt: skip
        layers.append(block)
        width = out
    layers.append(GlobalAvgPool())
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Linear(width, n_classes, nonlinearity="linear", generator=generator))
    return Sequential(*layers)


MODELS: dict[str, Callable[..., Module]] = {
    "lesson": lesson,
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
}


def _image_side(
    name: str, in_features: int, channels: Sequence[int], strides: Sequence[int]
) -> int:
    """The side of the square one-channel images a convolutional model ``name`` takes, after
    checking that ``in_features`` is one and that each block has its stride."""
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise ValueError(
            f"{name}: in_features={in_features} is not a square image (28x28 = 784 pixels); the "
            f"{name} model needs square one-channel images"
        )
    if len(channels) != len(strides) or not channels:
        raise ValueError(
            f"{name}: give one stride per block: channels={channels}, strides={strides}"
        )
    return side


def build_model(name: str, **kwargs: object) -> Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
