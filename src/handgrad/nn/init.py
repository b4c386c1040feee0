"""Weight initialisation: what scale the first forward pass starts from.

The lesson drew weights from ``randn`` (std 1). Each output of a 784-input linear layer then
sums 784 products and has a standard deviation of about ``sqrt(784 * E[x^2])``, which grows
layer after layer: its first MSE was about 2,600. Kaiming/He init (``std = gain / sqrt(fan_in)``
with ``gain = sqrt(2)`` for ReLU) keeps the variance of activations near 1 through ReLU layers;
Xavier/Glorot (``gain / sqrt((fan_in + fan_out) / 2)``) does so for tanh and sigmoid.

What each layer uses (the rule :func:`init_model` applies to a whole network):

============================  =====================  ==========================================
weight layer feeding ...      method                 std of the weights
============================  =====================  ==========================================
ReLU, GELU, SiLU, Mish,       Kaiming                ``sqrt(2) / sqrt(fan_in)``
symbolic ``Activation``
LeakyReLU / GeneralRelu       Kaiming                ``sqrt(2 / (1 + leak^2)) / sqrt(fan_in)``
(slope ``leak``)
Tanh                          Xavier                 ``5/3 * sqrt(2 / (fan_in + fan_out))``
Sigmoid                       Xavier                 ``sqrt(2 / (fan_in + fan_out))``
nothing (a head, logits)      Kaiming, gain 1        ``1 / sqrt(fan_in)`` (LeCun)
============================  =====================  ==========================================

Fans: ``Linear(in, out)`` has ``fan_in = in``, ``fan_out = out``; ``Conv2d`` has
``fan_in = C/groups * kh * kw`` and ``fan_out = O/groups * kh * kw`` (each output sees a patch).
Biases start at zero; batch norm starts at ``gamma = 1``, ``beta = 0``. Layers take ``init=``
and ``nonlinearity=`` arguments when built one by one; :func:`init_model` re-draws a built
network by looking, for each weight layer, at the activation that follows it.

:func:`lsuv_init` (layer-sequential unit variance, Mishkin and Matas 2016) then measures
instead of assuming: on a real batch it rescales each layer's weights, in order, until that
layer's outputs have standard deviation 1 (and shifts biases to mean 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from handgrad.nn.module import Module

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


# ------------------------------------------------------------------------- whole networks
def recommended_init(activation: Module | None) -> tuple[str, str, float]:
    """``(method, nonlinearity, leak)`` for a weight layer whose output goes into ``activation``
    (``None``: straight out, e.g. the logits), per the table in the module docstring."""
    if activation is None:
        return "kaiming", "linear", 0.0
    name = getattr(activation, "init_nonlinearity", "linear")
    if name in ("tanh", "sigmoid"):
        return "xavier", name, 0.0
    if name == "leaky_relu":
        return "kaiming", name, float(getattr(activation, "leak", None) or 0.0)
    return "kaiming", name if name in GAINS else "linear", 0.0


def _fans(layer: Module) -> tuple[int, int]:
    from handgrad.nn.layers import Conv2d, Linear

    if isinstance(layer, Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv2d):
        kh, kw = layer.geometry.kernel
        g = layer.geometry.groups
        return layer.in_channels // g * kh * kw, layer.out_channels // g * kh * kw
    raise TypeError(f"{type(layer).__name__} is not a weight layer")


def weight_layers(model: Module) -> Iterator[tuple[str, Module]]:
    """Every ``Linear`` and ``Conv2d`` in ``model``, in the order of its attributes (for a
    ``Sequential``: the order of the forward pass)."""
    from handgrad.nn.layers import Conv2d, Linear

    for name, m in model.named_modules():
        if isinstance(m, Linear | Conv2d):
            yield name, m


def init_model(model: Module, *, generator: torch.Generator | None = None) -> Module:
    """Re-draw every weight of ``model`` for the activation that follows its layer (the first
    module with ``init_nonlinearity`` after it and before the next weight layer; layers in
    between such as batch norm, pooling or dropout do not change the choice). Biases are set to
    zero. Returns ``model``."""
    from handgrad.nn.layers import Conv2d, Linear

    leaves = [m for _, m in model.named_modules() if not list(m._children())]
    for i, layer in enumerate(leaves):
        if not isinstance(layer, Linear | Conv2d):
            continue
        activation = None
        for nxt in leaves[i + 1 :]:
            if isinstance(nxt, Linear | Conv2d):
                break
            if hasattr(nxt, "init_nonlinearity"):
                activation = nxt
                break
        method, nonlinearity, leak = recommended_init(activation)
        fan_in, fan_out = _fans(layer)
        w = layer.weight
        new = init_weight(
            tuple(w.shape), fan_in, fan_out, method, nonlinearity=nonlinearity, leak=leak,
            generator=generator, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            w.copy_(new.to(w.device))
            if layer.bias is not None:
                layer.bias.zero_()
    return model


def lsuv_init(
    model: Module, xb: Tensor, *, tol: float = 0.02, max_iters: int = 10
) -> list[tuple[str, float, float]]:
    """Layer-sequential unit variance: for each weight layer in order, run ``model(xb)`` and
    map the layer's output to ``(output - mean) / std`` by rescaling its weights and shifting
    its bias, until the std is within ``tol`` of 1 (and the mean within ``tol`` of 0, for a
    layer with a bias) or ``max_iters`` passes.

    Runs in evaluation mode (dropout off, batch norm on its running statistics, nothing kept
    for backward) and restores each module's mode after. Returns ``(layer name, mean, std)`` of
    each layer's output at the end. Raises ``ValueError`` for a layer whose output is constant.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    report = []
    try:
        for name, layer in weight_layers(model):
            seen: dict[str, Any] = {}
            handle = layer.register_forward_hook(lambda m, a, out, seen=seen: seen.update(out=out))
            try:
                for _ in range(max_iters + 1):
                    with torch.no_grad():
                        model(xb)
                    out = seen["out"]
                    mean, std = out.mean().item(), out.std().item()
                    if not std > 0:
                        raise ValueError(f"lsuv_init: the output of {name or 'model'} is constant")
                    centred = layer.bias is None or abs(mean) <= tol
                    if abs(std - 1.0) <= tol and centred:
                        break
                    with torch.no_grad():  # output -> (output - mean) / std
                        if layer.bias is not None:
                            layer.bias.sub_(mean).div_(std)
                        layer.weight.div_(std)
            finally:
                handle.remove()
            report.append((name, mean, std))
    finally:
        for m, mode in modes:
            m.training = mode
    return report
