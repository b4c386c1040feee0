"""Layers: thin stateful wrappers over :mod:`handgrad.nn.functional`, one module per idea.

Each class holds its parameters, calls one forward/backward pair of ``functional`` and keeps,
via ``save_for_backward``, what the backward needs.
"""

from handgrad.nn.layers.activations import (
    GELU,
    GeneralRelu,
    LeakyReLU,
    Mish,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from handgrad.nn.layers.conv import Conv2d
from handgrad.nn.layers.dropout import Dropout
from handgrad.nn.layers.linear import Linear
from handgrad.nn.layers.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNormAddReLU2d,
    BatchNormReLU2d,
    LayerNorm,
)
from handgrad.nn.layers.pool import AvgPool2d, GlobalAvgPool, MaxPool2d
from handgrad.nn.layers.resblock import ResBlock
from handgrad.nn.layers.reshape import Flatten, Identity, Reshape

__all__ = [
    "GELU",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormAddReLU2d",
    "BatchNormReLU2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "GeneralRelu",
    "GlobalAvgPool",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Mish",
    "ReLU",
    "ResBlock",
    "Reshape",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]
