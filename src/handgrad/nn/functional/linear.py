"""Linear: ``y = x @ W + b``."""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows from which ``dW`` is computed as ``(dout^T @ x)^T`` (see :func:`linear_backward`).
TALL = 4096


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
    # For tall x, MKL computes the (out, in)-shaped product faster than the (in, out)-shaped
    # one (benchmarks/RESULTS.md); copying it into our layout is cheap.
    tall = x.shape[0] >= TALL
    dweight = (
        (dout.t() @ x).t().contiguous()  # ((out, N) @ (N, in))^T -> (in, out)
        if tall
        else x.t() @ dout  # (in, N) @ (N, out) -> (in, out)
    )
    dbias = dout.sum(0) if has_bias else None  # (out,)
    return dx, dweight, dbias
