"""The math: pure forward/backward pairs, side by side.

Each operation is two functions. ``<op>_forward`` returns the output and whatever the backward
needs (the "cache"); ``<op>_backward`` takes the gradient of the loss with respect to the output
(``dout``) and the cache, and returns the gradient with respect to each input. Nothing here
keeps state, touches ``.g`` attributes or uses autograd: layers in :mod:`handgrad.layers` are
thin wrappers that store the cache between the two calls.

Conventions: ``N`` is the batch size; gradients are named ``d<name>``; a backward never
modifies ``dout`` in place (the caller may still hold it).
"""

from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# linear: y = x @ W + b
# ---------------------------------------------------------------------------------------------


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``y = x @ W + b`` with ``W`` of shape (in_features, out_features), as in the lesson.

    The cache is just ``x`` and ``W``, which the caller already holds, so only ``y`` is returned.
    """
    if bias is None:
        return x @ weight  # (N, in) @ (in, out) -> (N, out)
    # addmm fuses the bias add into the GEMM: one kernel, no (N, out) temporary.
    return torch.addmm(bias, x, weight)  # (N, out)


def linear_backward(
    dout: Tensor, x: Tensor, weight: Tensor, *, has_bias: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Gradients of ``y = x @ W + b``.

    ``dx = dout @ W^T``, ``dW = x^T @ dout``, ``db = sum_n dout[n]``.

    ``dW`` is one (in, N) @ (N, out) matrix product. The lesson's version broadcast
    ``x[:, :, None] * dout[:, None, :]`` to an (N, in, out) tensor and summed over N: the same
    numbers, but 50,000 x 784 x 50 floats (7.8 GB) for MNIST. ``dx`` is skipped when the input is
    data that needs no gradient (the first layer): it is the largest product of the backward.
    """
    dx = dout @ weight.t() if need_dx else None  # (N, out) @ (out, in) -> (N, in)
    dweight = x.t() @ dout  # (in, N) @ (N, out) -> (in, out)
    dbias = dout.sum(0) if has_bias else None  # (out,)
    return dx, dweight, dbias


# ---------------------------------------------------------------------------------------------
# relu: y = max(x, 0)
# ---------------------------------------------------------------------------------------------


def relu_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = max(x, 0)``; the cache is the bool mask ``x > 0`` (1 byte per element, not 4)."""
    out = x.clamp_min(0.0)
    return out, out > 0


def relu_backward(dout: Tensor, mask: Tensor) -> Tensor:
    """``dy/dx = 1`` where ``x > 0`` else ``0`` (the subgradient 0 is taken at ``x = 0``)."""
    return dout * mask


# ---------------------------------------------------------------------------------------------
# mse: L = mean((input - target)^2)
# ---------------------------------------------------------------------------------------------


def mse_forward(inp: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``L = (1/M) sum_i (input_i - target_i)^2`` over all M elements.

    ``input`` may carry a trailing size-1 dimension that ``target`` lacks (the lesson's (N, 1)
    predictions against (N,) targets): it is viewed as ``target``'s shape first. Broadcasting the
    two instead would silently build an (N, N) matrix, the classic bug this guards against.
    Returns the loss and the cache ``diff = input - target``.
    """
    if inp.numel() != target.numel():
        raise ValueError(
            f"mse: input has {inp.numel()} elements {tuple(inp.shape)} but target has "
            f"{target.numel()} {tuple(target.shape)}; give one prediction per target value"
        )
    diff = inp.reshape(target.shape) - target  # target's shape
    return diff.pow(2).mean(), diff


def mse_backward(dout: Tensor, diff: Tensor, input_shape: torch.Size) -> Tensor:
    """``dL/dinput_i = 2 (input_i - target_i) / M``, scaled by the upstream ``dout``."""
    return (diff * (2.0 * dout / diff.numel())).reshape(input_shape)
