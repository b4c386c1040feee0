"""Activation layers: element-wise (``Softmax``: along one axis), no parameters.

Each class names, in ``init_nonlinearity``, the gain that a weight layer feeding it should be
initialised with (:func:`handgrad.nn.init.init_model` reads it): the ReLU family (ReLU, leaky and
general ReLU, GELU, SiLU, Mish) takes Kaiming's ``sqrt(2)``; tanh and sigmoid take Xavier's.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.module import Module


class ReLU(Module):
    """``y = max(x, 0)``, element-wise; ``dy/dx = 1[x > 0]``. Backward reads the output
    (``y > 0`` exactly where ``x > 0``), so nothing extra is kept, in training or evaluation."""

    init_nonlinearity: ClassVar[str] = "relu"

    def forward(self, x: Tensor) -> Tensor:
        out, _ = F.relu_forward(x)  # the cache is `out`, which bwd receives anyway
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.relu_backward(out.g, out)


class LeakyReLU(Module):
    """``y = x`` for ``x > 0``, else ``negative_slope * x``; ``dy/dx = 1`` or the slope."""

    init_nonlinearity: ClassVar[str] = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = negative_slope

    @property
    def leak(self) -> float:
        return self.negative_slope

    def forward(self, x: Tensor) -> Tensor:
        out, mask = F.leaky_relu_forward(x, self.negative_slope)
        self.save_for_backward(mask)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (mask,) = self.saved
        x.g = F.leaky_relu_backward(out.g, mask, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GeneralRelu(Module):
    """The fast.ai course's ``GeneralRelu``: ``y = min(leaky_relu(x, leak) - sub, maxv)``.

    Args:
        leak: slope for ``x < 0`` (``None``: a plain ReLU).
        sub: subtracted from the output, to bring its mean back towards 0 (``None``: nothing).
        maxv: the output is clamped at this value (``None``: no clamp).

    ``dy/dx = 1`` (``x > 0``) or ``leak``, and 0 where the output was clamped.
    """

    init_nonlinearity: ClassVar[str] = "leaky_relu"

    def __init__(
        self, leak: float | None = None, sub: float | None = None, maxv: float | None = None
    ) -> None:
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: Tensor) -> Tensor:
        out, _ = F.general_relu_forward(x, self.leak, self.sub, self.maxv)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.general_relu_backward(out.g, x, self.leak, self.sub, self.maxv)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


class Sigmoid(Module):
    """``y = 1 / (1 + exp(-x))``; ``dy/dx = y (1 - y)`` (from the output, nothing extra kept)."""

    init_nonlinearity: ClassVar[str] = "sigmoid"

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid_forward(x)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.sigmoid_backward(out.g, out)


class Tanh(Module):
    """``y = tanh(x)``; ``dy/dx = 1 - y^2`` (from the output)."""

    init_nonlinearity: ClassVar[str] = "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh_forward(x)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.tanh_backward(out.g, out)


class GELU(Module):
    """``y = x * Phi(x)`` (``Phi``: the standard normal CDF, via ``erf``), or with
    ``approximate="tanh"`` the tanh approximation used by GPT-2 and BERT.
    ``dy/dx = Phi(x) + x * phi(x)`` (exact form)."""

    init_nonlinearity: ClassVar[str] = "relu"

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu_forward(x, self.approximate)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.gelu_backward(out.g, x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}" if self.approximate != "none" else ""


class SiLU(Module):
    """SiLU (swish): ``y = x * sigmoid(x)``; ``dy/dx = s (1 + x (1 - s))``, ``s = sigmoid(x)``."""

    init_nonlinearity: ClassVar[str] = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return F.silu_forward(x)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.silu_backward(out.g, x)


class Mish(Module):
    """Mish: ``y = x * tanh(softplus(x))``;
    ``dy/dx = tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2)``, ``sp = softplus(x)``."""

    init_nonlinearity: ClassVar[str] = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return F.mish_forward(x)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.mish_backward(out.g, x)


class Softmax(Module):
    """``y = exp(x) / sum(exp(x))`` along ``dim``; ``dx = y * (dy - sum(dy * y))`` along ``dim``.
    (For a classifier, use the cross-entropy loss on the logits: it fuses the two.)"""

    init_nonlinearity: ClassVar[str] = "linear"

    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax_forward(x, self.dim)[0]

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.softmax_backward(out.g, out, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
