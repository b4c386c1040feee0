"""The update rules, each written once, over lists of tensors.

A rule gets the parameters that have a gradient, their gradients and their state buffers, and
updates parameters and buffers in place; it never modifies a gradient. Each line is one
``torch._foreach_*`` call, which applies one operation to the whole list at once, so a step
costs a few calls whatever the number of parameters. (The calls also take lists that mix
dtypes or devices: they fall back to one tensor at a time by themselves.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Tensors = Sequence[Tensor]


def sgd(
    params: Tensors,
    grads: Tensors,
    bufs: Tensors,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """One SGD step (``torch.optim.SGD``, ``dampening=0``): L2 decay, then momentum.

    The buffers ``bufs`` start at zero, so the first step's ``b = momentum * 0 + g`` is ``g``
    exactly, as in PyTorch. Without momentum ``bufs`` is unused.
    """
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)  # g + wd p (new tensors)
    if momentum != 0.0:
        torch._foreach_mul_(bufs, momentum)  # b = momentum b + g
        torch._foreach_add_(bufs, grads)
        # Nesterov looks ahead, g + momentum b; classical momentum steps along b itself.
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)  # p = p - lr g


def adam(
    params: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """One Adam step (``torch.optim.Adam``), or AdamW's when ``decoupled``.

    ``steps[i]`` is the update count ``t`` of ``params[i]``, counting this one (bias
    correction). The last line is PyTorch's arrangement of ``p - lr m_hat / (sqrt(v_hat) +
    eps)``: ``p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """
    if weight_decay != 0.0:
        if decoupled:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)  # p = p (1 - lr wd)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)  # g + wd p
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m = beta1 m + (1 - beta1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)  # v = beta2 v + (1 - beta2) g^2
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

    step_sizes = [-lr / (1.0 - beta1**t) for t in steps]
    bias_correction2_sqrts = [math.sqrt(1.0 - beta2**t) for t in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)  # sqrt(v_hat) + eps
    torch._foreach_div_(denom, bias_correction2_sqrts)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)  # p = p - lr m_hat / denom
