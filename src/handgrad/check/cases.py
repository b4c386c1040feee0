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

from handgrad.check import Reference
from handgrad.nn.layers import (
    GELU,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNormAddReLU2d,
    BatchNormReLU2d,
    Conv2d,
    Dropout,
    Flatten,
    GeneralRelu,
    GlobalAvgPool,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Mish,
    ReLU,
    ResBlock,
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Module, Sequential

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


def plain(p: Tensor | None) -> Tensor | None:
    """A parameter as a plain tensor for torch.nn.functional (``None`` stays ``None``)."""
    return None if p is None else p.as_subclass(Tensor)


def conv_reference(m: Conv2d, x: Tensor) -> Tensor:
    g = m.geometry
    return TF.conv2d(x, plain(m.weight), plain(m.bias), g.stride, g.padding, g.dilation, g.groups)


def maxpool_reference(m: MaxPool2d, x: Tensor) -> Tensor:
    g = m.geometry
    return TF.max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation)


def avgpool_reference(m: AvgPool2d, x: Tensor) -> Tensor:
    g = m.geometry
    return TF.avg_pool2d(x, g.kernel, g.stride, g.padding)


def batchnorm_reference(m: BatchNorm1d | BatchNorm2d, x: Tensor) -> Tensor:
    return TF.batch_norm(x, None, None, plain(m.weight), plain(m.bias), True, 0.0, m.eps)


def batchnorm_relu_reference(m: BatchNormReLU2d, x: Tensor) -> Tensor:
    return TF.relu(batchnorm_reference(m, x))


def batchnorm_add_relu_reference(m: BatchNormAddReLU2d, x: Tensor, residual: Tensor) -> Tensor:
    return TF.relu(batchnorm_reference(m, x) + residual)


def affine_bn(cls: type[BatchNorm2d | BatchNormReLU2d | BatchNormAddReLU2d], c: int) -> Maker:
    """A batch norm with non-trivial ``gamma`` and ``beta`` drawn from the case's generator
    (ones and zeros would leave terms of the backward formula unexercised)."""

    def make(g: torch.Generator) -> Module:
        m = cls(c)
        with torch.no_grad():
            m.weight.copy_(torch.randn(c, generator=g))
            m.bias.copy_(torch.randn(c, generator=g))
        return m

    return make


def layernorm_reference(m: LayerNorm, x: Tensor) -> Tensor:
    return TF.layer_norm(x, m.normalized_shape, plain(m.weight), plain(m.bias), m.eps)


def dropout_reference(m: Dropout, x: Tensor) -> Tensor:
    """The same mask (the global generator is re-seeded before each forward), scaled."""
    return x * (torch.rand(x.shape, dtype=x.dtype) >= m.p) / (1 - m.p)


def general_relu_reference(m: GeneralRelu, x: Tensor) -> Tensor:
    out = TF.leaky_relu(x, m.leak or 0.0) - (m.sub or 0.0)
    return out if m.maxv is None else out.clamp_max(m.maxv)


def symbolic(formula: str) -> Module:
    """``Activation.from_sympy(formula)``, imported only when a case is built (sympy is slow to
    import, and most commands never need it)."""
    from handgrad.check.symbolic import Activation

    return Activation.from_sympy(formula)


def resblock(c: int, o: int, stride: int) -> Maker:
    """A ``ResBlock`` whose batch norms have non-trivial ``gamma`` and ``beta`` (the second
    one's ``gamma`` at 0 or 1 would hide the main path or leave terms unexercised)."""

    def make(g: torch.Generator) -> Module:
        m = ResBlock(c, o, stride, generator=g)
        for bn in (m.bn1, m.bn2, m.skip_bn):
            if bn is not None:
                with torch.no_grad():
                    bn.weight.copy_(torch.randn(o, generator=g))
                    bn.bias.copy_(torch.randn(o, generator=g))
        return m

    return make


def resblock_reference(m: ResBlock, x: Tensor) -> Tensor:
    """``relu(F(x) + S(x))`` from torch.nn.functional, batch statistics as in training."""
    h = batchnorm_relu_reference(m.bn1, conv_reference(m.conv1, x))
    skip = (
        x if m.skip_conv is None else batchnorm_reference(m.skip_bn, conv_reference(m.skip_conv, x))
    )
    return batchnorm_add_relu_reference(m.bn2, conv_reference(m.conv2, h), skip)


def tiny_cnn(g: torch.Generator) -> Module:

    return build_model("cnn", in_features=36, channels=(2, 3), strides=(1, 2), generator=g)


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
    # convolution and pooling
    Case("Conv2d 3x3 pad 1 (im2col)", lambda g: Conv2d(3, 4, 3, padding=1, method="im2col",
         generator=g), randn(2, 3, 5, 5), conv_reference),
    Case("Conv2d stride 2 (direct)", lambda g: Conv2d(3, 4, 3, stride=2, padding=1,
         method="direct", generator=g), randn(2, 3, 6, 6), conv_reference),
    Case("Conv2d dilation 2, groups 2, batch 1", lambda g: Conv2d(4, 6, 3, padding=2, dilation=2,
         groups=2, generator=g), randn(1, 4, 5, 5), conv_reference),
    Case("Conv2d 3x3 channels-last", lambda g: Conv2d(3, 4, 3, padding=1, channels_last=True,
         generator=g), randn(2, 3, 5, 5), conv_reference),
    Case("Conv2d 1x1 stride 2 channels-last", lambda g: Conv2d(3, 4, 1, stride=2,
         channels_last=True, generator=g), randn(2, 3, 5, 5), conv_reference),
    Case("MaxPool2d 2x2", lambda g: MaxPool2d(2), randn(2, 3, 4, 4), maxpool_reference),
    Case("MaxPool2d 3x3 stride 2 pad 1", lambda g: MaxPool2d(3, 2, 1), randn(1, 2, 5, 5),
         maxpool_reference),
    Case("AvgPool2d 3x3 stride 2 pad 1", lambda g: AvgPool2d(3, 2, 1), randn(2, 2, 5, 5),
         avgpool_reference),
    Case("GlobalAvgPool", lambda g: GlobalAvgPool(), randn(2, 3, 3, 4),
         lambda m, x: x.mean((2, 3))),
    Case("Flatten", lambda g: Flatten(), randn(2, 3, 2, 2), lambda m, x: x.flatten(1)),
    Case("Reshape", lambda g: Reshape(2, 3), randn(2, 6), lambda m, x: x.view(2, 2, 3)),
    # normalisation and dropout
    Case("BatchNorm1d", lambda g: BatchNorm1d(4), randn(5, 4), batchnorm_reference),
    Case("BatchNorm2d", lambda g: BatchNorm2d(3), randn(2, 3, 3, 3), batchnorm_reference),
    Case("BatchNormReLU2d", affine_bn(BatchNormReLU2d, 3), randn(2, 3, 3, 3),
         batchnorm_relu_reference),
    Case("BatchNormReLU2d batch 1", affine_bn(BatchNormReLU2d, 2), randn(1, 2, 3, 3),
         batchnorm_relu_reference),
    Case("BatchNormAddReLU2d (two inputs)", affine_bn(BatchNormAddReLU2d, 3),
         lambda g: tuple(torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64) for _ in "xr"),
         batchnorm_add_relu_reference),
    Case("Identity", lambda g: Identity(), randn(2, 3), lambda m, x: x),
    Case("LayerNorm", lambda g: LayerNorm(6), randn(3, 6), layernorm_reference),
    Case("Dropout p=0.5", lambda g: Dropout(0.5), randn(4, 6), dropout_reference),
    # activations
    Case("LeakyReLU", lambda g: LeakyReLU(0.1), randn(4, 5), lambda m, x: TF.leaky_relu(x, 0.1)),
    Case("GeneralRelu", lambda g: GeneralRelu(0.1, 0.4, 1.0), randn(4, 5),
         general_relu_reference),
    Case("Sigmoid", lambda g: Sigmoid(), randn(4, 5), lambda m, x: torch.sigmoid(x)),
    Case("Tanh", lambda g: Tanh(), randn(4, 5), lambda m, x: torch.tanh(x)),
    Case("GELU", lambda g: GELU(), randn(4, 5), lambda m, x: TF.gelu(x)),
    Case("GELU tanh", lambda g: GELU("tanh"), randn(4, 5),
         lambda m, x: TF.gelu(x, approximate="tanh")),
    Case("SiLU", lambda g: SiLU(), randn(4, 5), lambda m, x: TF.silu(x)),
    Case("Mish", lambda g: Mish(), randn(4, 5), lambda m, x: TF.mish(x)),
    Case("Softmax dim 1", lambda g: Softmax(1), randn(3, 4), lambda m, x: torch.softmax(x, 1)),
    # activations derived by sympy, checked against PyTorch's twins
    Case("sympy x*tanh(log(1+exp(x)))", lambda g: symbolic("x * tanh(log(1 + exp(x)))"),
         randn(4, 5), lambda m, x: TF.mish(x)),
    Case("sympy x/(1+exp(-x))", lambda g: symbolic("x / (1 + exp(-x))"), randn(4, 5),
         lambda m, x: TF.silu(x)),
    # residual blocks: the input used twice (main and skip path), gradients summed
    Case("ResBlock identity skip", resblock(3, 3, 1), randn(2, 3, 5, 5), resblock_reference),
    Case("ResBlock stride 2, 1x1 projection", resblock(2, 4, 2), randn(2, 2, 6, 6),
         resblock_reference),
    Case("resnet model (tiny)", lambda g: build_model("resnet", in_features=36, stem=2,
         channels=(2, 3), strides=(1, 2), zero_init=False, generator=g), randn(3, 36)),
    # a whole (tiny) cnn: reshape, conv, batch norm, ReLU, pooling, dropout, linear
    Case("cnn model (tiny)", tiny_cnn, randn(2, 36)),
]  # fmt: skip
