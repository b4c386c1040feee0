"""Initialising a whole network: each weight layer drawn for the activation that follows it.

The tensor-level rules (gains, Kaiming, Xavier) are in :mod:`handgrad.nn.weights`, which the
layers use when built one by one; this module sits above the layers and walks a built model.
What :func:`init_model` gives each weight layer:

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
Biases start at zero; batch norm starts at ``gamma = 1``, ``beta = 0``.

:func:`lsuv_init` (layer-sequential unit variance, Mishkin and Matas 2016) then measures
instead of assuming: on a real batch it rescales each layer's weights, in order, until that
layer's outputs have standard deviation 1 (and shifts biases to mean 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from handgrad.nn.layers import Conv2d, Linear
from handgrad.nn.module import Module
from handgrad.nn.weights import GAINS, INITS, gain, init_weight

# The tensor-level names are re-exported: the old path ``handgrad.init`` had them all.
__all__ = [
    "GAINS",
    "INITS",
    "gain",
    "init_model",
    "init_weight",
    "lsuv_init",
    "recommended_init",
    "weight_layers",
]


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
    for name, m in model.named_modules():
        if isinstance(m, Linear | Conv2d):
            yield name, m


def init_model(model: Module, *, generator: torch.Generator | None = None) -> Module:
    """Re-draw every weight of ``model`` for the activation that follows its layer (the first
    module with ``init_nonlinearity`` after it and before the next weight layer; layers in
    between such as batch norm, pooling or dropout do not change the choice). Biases are set to
    zero. Returns ``model``."""
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
