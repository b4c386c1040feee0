"""What the compiled step runs: a :class:`~handgrad.nn.module.Sequential` read as a list of
layer codes and numbers (``mlp_step.cpp``'s ``kinds``, ``fparams`` and tensor slots), or the
reason it cannot be.

A layer qualifies when its class computes what handgrad's own class computes (a subclass that
only changes ``__init__``, such as the lesson's ``Lin``, does): ``Linear``, ``ReLU``,
``LeakyReLU``, ``GeneralRelu``, ``GELU`` (both forms), ``SiLU``, ``Tanh``, ``Sigmoid``,
``Dropout``, ``BatchNorm1d`` with running statistics, and ``Identity`` (left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from handgrad.nn.layers import (
    GELU,
    BatchNorm1d,
    Dropout,
    GeneralRelu,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Sigmoid,
    SiLU,
    Tanh,
)
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.module import Module, Sequential

CE, MSE = 0, 1  # loss codes
LINEAR, ACTIVATION, DROPOUT, BATCHNORM = 0, 1, 2, 3  # layer codes
SLOTS = 4  # tensors per layer (Linear: W, b; BatchNorm1d: gamma, beta, running mean, var)
_RELU, _LEAKY, _GENERAL, _GELU, _GELU_TANH, _SILU, _TANH, _SIGMOID = range(8)


def _unmodified(layer: Module, cls: type) -> bool:
    """The layer computes what ``cls`` computes (only ``__init__`` may differ)."""
    t = type(layer)
    return isinstance(layer, cls) and t.forward is cls.forward and t.bwd is cls.bwd  # type: ignore[attr-defined]


def activation_numbers(layer: Module) -> list[float] | None:
    """``[code, leak, sub, maxv, has_maxv]`` for a supported activation, else ``None``. As in
    :mod:`handgrad.nn.functional.activations`, a leak or sub of 0 (or ``None``) is none."""
    if _unmodified(layer, ReLU):
        return [_RELU, 0.0, 0.0, 0.0, 0.0]
    if _unmodified(layer, LeakyReLU):
        return [_LEAKY, float(layer.negative_slope), 0.0, 0.0, 0.0]  # type: ignore[attr-defined]
    if _unmodified(layer, GeneralRelu):
        leak, sub, maxv = layer.leak, layer.sub, layer.maxv  # type: ignore[attr-defined]
        has_maxv = maxv is not None
        return [_GENERAL, float(leak or 0.0), float(sub or 0.0), float(maxv or 0.0), has_maxv]
    if _unmodified(layer, GELU):
        return [_GELU if layer.approximate == "none" else _GELU_TANH, 0.0, 0.0, 0.0, 0.0]  # type: ignore[attr-defined]
    for cls, code in ((SiLU, _SILU), (Tanh, _TANH), (Sigmoid, _SIGMOID)):
        if _unmodified(layer, cls):
            return [code, 0.0, 0.0, 0.0, 0.0]
    return None


@dataclass
class Plan:
    """The compiled step's view of a model.

    Attributes:
        layers: the modules run, in order (``Identity`` left out).
        kinds: one layer code per module; ``fparams`` its numbers (batch norm's momentum is
            filled in per call).
        widths: each dropout's input width (``None``: the model's input width).
        params: the trainable tensors, in slot order; ``slots`` their slot numbers (layer
            ``k``'s two parameters sit in slots ``2k`` and ``2k + 1``).
        loss: :data:`CE` or :data:`MSE` (``-1`` without a loss).
        reason: why the model is not supported ("" when it is).
    """

    layers: list[Module] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    fparams: list[list[float]] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    loss: int = -1
    reason: str = ""

    @property
    def stateful(self) -> list[Module]:
        """The layers whose training behaviour differs from evaluation (dropout, batch norm)."""
        pairs = zip(self.layers, self.kinds, strict=True)
        return [m for m, k in pairs if k in (DROPOUT, BATCHNORM)]

    def tensors(self, n: int, like: Tensor) -> list[Tensor | None]:
        """Each layer's four tensor slots for a training batch of ``n`` rows. Draws each
        dropout's uniforms here, in layer order, from its own stream, as the readable forward
        pass would (so the masks are the same), and sets batch norm's momentum."""
        out: list[Tensor | None] = []
        for k, (layer, kind) in enumerate(zip(self.layers, self.kinds, strict=True)):
            if kind == LINEAR:
                out += [layer.weight, layer.bias, None, None]  # type: ignore[attr-defined]
            elif kind == DROPOUT:
                width = self.widths[k] or like.shape[1]
                gen = layer.generator  # type: ignore[attr-defined]
                u = torch.rand((n, width), generator=gen, device=like.device, dtype=like.dtype)
                out += [u, None, None, None]
            elif kind == BATCHNORM:
                bn: BatchNorm1d = layer  # type: ignore[assignment]
                momentum = bn.momentum
                if momentum is None:  # cumulative average, counting this batch
                    momentum = 1.0 / float(bn.num_batches_tracked + 1)
                self.fparams[k][1] = momentum
                out += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
            else:
                out += [None, None, None, None]
        return out

    def eval_tensors(self) -> list[Tensor | None]:
        """The tensor slots for inference (no dropout draws, nothing changed)."""
        out: list[Tensor | None] = []
        for layer, kind in zip(self.layers, self.kinds, strict=True):
            if kind == LINEAR:
                out += [layer.weight, layer.bias, None, None]  # type: ignore[attr-defined]
            elif kind == BATCHNORM:
                out += [layer.weight, layer.bias, layer.running_mean, layer.running_var]  # type: ignore[attr-defined]
            else:
                out += [None, None, None, None]
        return out

    def count_batches(self) -> None:
        """After a compiled training step: each batch norm counted this batch."""
        for layer, kind in zip(self.layers, self.kinds, strict=True):
            if kind == BATCHNORM:
                layer.num_batches_tracked.add_(1)  # type: ignore[attr-defined]


def make_plan(model: Module, loss_fn: Module | None) -> Plan:
    """The plan for ``model`` and ``loss_fn``, or one whose ``reason`` says why not."""
    plan = Plan()
    if type(loss_fn) is CrossEntropyLoss:
        plan.loss = CE
    elif type(loss_fn) is MSELoss:
        plan.loss = MSE
    elif loss_fn is not None:
        return Plan(reason=f"loss {type(loss_fn).__name__} is not CrossEntropyLoss or MSELoss")
    if not isinstance(model, Sequential) or type(model).forward is not Sequential.forward:
        return Plan(reason=f"model {type(model).__name__} is not a Sequential")
    width: int | None = None  # the current layer's input width (None: the model's input)
    for i, layer in enumerate(model.layers):
        act = activation_numbers(layer)
        k = len(plan.layers)
        if _unmodified(layer, Identity):
            continue
        if _unmodified(layer, Linear):
            plan.kinds.append(LINEAR)
            plan.fparams.append([])
            width = layer.weight.shape[1]  # type: ignore[attr-defined]
        elif act is not None:
            plan.kinds.append(ACTIVATION)
            plan.fparams.append(act)
        elif _unmodified(layer, Dropout):
            plan.kinds.append(DROPOUT)
            plan.fparams.append([float(layer.p)])  # type: ignore[attr-defined]
        elif (
            _unmodified(layer, BatchNorm1d)
            and not layer.relu  # type: ignore[attr-defined]
            and layer.track_running_stats  # type: ignore[attr-defined]
        ):
            plan.kinds.append(BATCHNORM)
            plan.fparams.append([float(layer.eps), 0.0, 1.0])  # type: ignore[attr-defined]
        else:
            return Plan(reason=f"layer {i} ({type(layer).__name__}) is not supported")
        plan.layers.append(layer)
        plan.widths.append(width)
        if plan.kinds[-1] in (LINEAR, BATCHNORM):
            for j, p in enumerate((layer.weight, layer.bias)):  # type: ignore[attr-defined]
                if p is not None:
                    plan.params.append(p)
                    plan.slots.append(2 * k + j)
    if LINEAR not in plan.kinds:
        return Plan(reason="the model has no Linear layer")
    return plan
