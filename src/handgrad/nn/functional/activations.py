"""Element-wise activations: each forward returns ``(y, cache)``, each backward ``dx``.

The cache is the cheapest thing the derivative can be computed from: the output itself when
the derivative is a function of it (ReLU, sigmoid, tanh, softmax: no extra memory, the layer
already holds its output), a bool mask for leaky ReLU (1 byte per element), else the input
(which the layer holds too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# ---------------------------------------------------------------------------- ReLU family
def relu_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = max(x, 0)``; the cache is ``y`` itself: ``y > 0`` exactly where ``x > 0``, so the
    derivative needs no mask of its own (no extra memory: the layer holds ``y`` anyway)."""
    out = x.clamp_min(0.0)
    return out, out


def relu_backward(dout: Tensor, out: Tensor) -> Tensor:
    """``dy/dx = 1`` where ``y > 0`` else ``0`` (the subgradient 0 is taken at ``x = 0``).

    That is ``dout * (y > 0)``, computed by ATen's ``threshold_backward`` (the kernel behind
    PyTorch's own ReLU backward) in one pass: the product with a bool mask would first build
    the mask, then a float copy of it (several times slower: benchmarks/RESULTS.md).
    """
    return torch.ops.aten.threshold_backward(dout, out, 0.0)


def leaky_relu_forward(x: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """``y = x`` for ``x > 0``, else ``slope * x``; the cache is the mask ``x > 0``."""
    mask = x > 0
    return torch.where(mask, x, x * slope), mask


def leaky_relu_backward(dout: Tensor, mask: Tensor, slope: float) -> Tensor:
    """``dy/dx = 1`` where ``x > 0`` else ``slope``."""
    return torch.where(mask, dout, dout * slope)


def general_relu_forward(
    x: Tensor, leak: float | None = None, sub: float | None = None, maxv: float | None = None
) -> tuple[Tensor, Tensor]:
    """The course's ``GeneralRelu``: ``y = min(leaky_relu(x, leak) - sub, maxv)``.

    ``leak=None`` is a plain ReLU, ``sub`` shifts the output down (a ReLU's mean is positive;
    subtracting about 0.4 re-centres it) and ``maxv`` clamps it. The cache is ``x``.
    """
    out = torch.where(x > 0, x, x * leak) if leak else x.clamp_min(0.0)
    if sub:
        out = out - sub
    if maxv is not None:
        out = out.clamp_max(maxv)
    return out, x


def general_relu_backward(
    dout: Tensor, x: Tensor, leak: float | None = None, sub: float | None = None,
    maxv: float | None = None,
) -> Tensor:  # fmt: skip
    """``dy/dx = 1`` for ``x > 0``, ``leak`` (or 0) otherwise, and 0 where the output was
    clamped at ``maxv`` (it no longer moves with ``x``)."""
    pos = x > 0
    dx = torch.where(pos, dout, dout * leak) if leak else dout * pos
    if maxv is not None:
        pre = torch.where(pos, x, x * leak) if leak else x.clamp_min(0.0)
        if sub:
            pre = pre - sub
        dx = dx * (pre <= maxv)
    return dx


# ------------------------------------------------------------------------ smooth, saturating
def sigmoid_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = 1 / (1 + exp(-x))``; the cache is ``y`` (computed without overflow by torch)."""
    out = torch.sigmoid(x)
    return out, out


def sigmoid_backward(dout: Tensor, out: Tensor) -> Tensor:
    """``dy/dx = y (1 - y)``."""
    return dout * out * (1.0 - out)


def tanh_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = tanh(x)``; the cache is ``y``."""
    out = torch.tanh(x)
    return out, out


def tanh_backward(dout: Tensor, out: Tensor) -> Tensor:
    """``dy/dx = 1 - y^2``."""
    return dout * (1.0 - out * out)


# ------------------------------------------------------------------------ smooth, ReLU-like
_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


def gelu_forward(x: Tensor, approximate: str = "none") -> tuple[Tensor, Tensor]:
    """``y = x * Phi(x)`` with ``Phi`` the standard normal CDF, ``Phi(x) = (1 + erf(x/sqrt2))/2``
    (``approximate="none"``), or the tanh approximation ``Phi(x) ~ (1 + tanh(u))/2`` with
    ``u = sqrt(2/pi) (x + 0.044715 x^3)`` (``approximate="tanh"``). The cache is ``x``."""
    if approximate == "none":
        return x * 0.5 * (1.0 + torch.erf(x / _SQRT_2)), x
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x.pow(3))
        return 0.5 * x * (1.0 + torch.tanh(u)), x
    raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dout: Tensor, x: Tensor, approximate: str = "none") -> Tensor:
    """Exact: ``dy/dx = Phi(x) + x phi(x)`` with ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``.
    Tanh form: ``dy/dx = (1 + t)/2 + x (1 - t^2)/2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)``."""
    if approximate == "tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x.pow(3)))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    cdf = 0.5 * (1.0 + torch.erf(x / _SQRT_2))
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dout * (cdf + x * pdf)


def silu_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """SiLU (swish): ``y = x * sigmoid(x)``. The cache is ``x``."""
    return x * torch.sigmoid(x), x


def silu_backward(dout: Tensor, x: Tensor) -> Tensor:
    """``dy/dx = s + x s (1 - s) = s (1 + x (1 - s))`` with ``s = sigmoid(x)``."""
    s = torch.sigmoid(x)
    return dout * s * (1.0 + x * (1.0 - s))


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` without overflow: ``max(x, 0) + log1p(exp(-|x|))``."""
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))


def mish_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mish: ``y = x * tanh(softplus(x))``. The cache is ``x``."""
    return x * torch.tanh(softplus(x)), x


def mish_backward(dout: Tensor, x: Tensor) -> Tensor:
    """``dy/dx = tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2)`` with ``sp = softplus(x)``
    (``d softplus/dx = sigmoid``)."""
    t = torch.tanh(softplus(x))
    return dout * (t + x * torch.sigmoid(x) * (1.0 - t * t))


# -------------------------------------------------------------------------------- softmax
def softmax_forward(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """``y_i = exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``dim`` (subtracting the max
    changes nothing mathematically and keeps ``exp`` from overflowing). The cache is ``y``."""
    e = (x - x.amax(dim=dim, keepdim=True)).exp_()
    out = e / e.sum(dim=dim, keepdim=True)
    return out, out


def softmax_backward(dout: Tensor, out: Tensor, dim: int = -1) -> Tensor:
    """The Jacobian is ``diag(y) - y y^T``, so ``dx = y * (dy - sum_j(dy_j y_j))`` along ``dim``
    (never forming the Jacobian)."""
    return out * (dout - (dout * out).sum(dim=dim, keepdim=True))
