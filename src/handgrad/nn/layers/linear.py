"""``Linear``: the fully connected layer."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.module import Module, Parameter
from handgrad.nn.weights import init_weight


class Linear(Module):
    """Applies ``y = x @ W + b``.

    ``W`` is stored as (in_features, out_features), the lesson's layout (``torch.nn.Linear``
    stores its transpose; :mod:`handgrad.interop.torch` converts).

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        bias: learn an additive bias (default ``True``).
        init: ``"kaiming"`` (default, ``N(0, 2 / in_features)``, right before a ReLU),
            ``"xavier"``, or the lesson's ``"randn"`` (``N(0, 1)``; explodes, kept to show why).
        generator: random generator for the initial weights (reproducible runs).

    Shape:
        input (N, in_features) -> output (N, out_features).

    Attributes:
        weight: (in_features, out_features), drawn by ``init``.
        bias: (out_features,), zeros.

    Example:
        >>> layer = Linear(784, 50)
        >>> layer(torch.randn(64, 784)).shape
        torch.Size([64, 50])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str = "kaiming",
        nonlinearity: str = "relu",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        w = init_weight(
            (in_features, out_features),
            in_features,
            out_features,
            init,
            nonlinearity=nonlinearity,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        self.weight = Parameter(w)
        self.bias = (
            Parameter(torch.zeros(out_features, device=device, dtype=w.dtype)) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self._label()}: expected input (N, {self.in_features}), got {tuple(x.shape)}"
            )
        return F.linear_forward(x, self.weight, self.bias)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        dx, self.weight.g, db = F.linear_backward(
            out.g, x, self.weight, has_bias=self.bias is not None, need_dx=self.needs_input_grad[0]
        )
        if self.bias is not None:
            self.bias.g = db
        if dx is not None:
            x.g = dx

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"
