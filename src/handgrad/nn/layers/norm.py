"""Normalisation layers: ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNormReLU2d`` (batch norm
and a ReLU in one layer), ``BatchNormAddReLU2d`` (batch norm, a residual and a ReLU: the end of
a residual block) and ``LayerNorm``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.module import Module, Parameter


class _BatchNorm(Module):
    """Shared by ``BatchNorm1d``/``BatchNorm2d``; they differ only in the input ranks accepted.

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel. Training: batch statistics
    (biased variance), and the running statistics move towards them by ``momentum``
    (``running = (1 - momentum) * running + momentum * batch``, the variance unbiased; with
    ``momentum=None`` a plain cumulative average, as in PyTorch). Evaluation: the running
    statistics. The backward is the compact formula of :mod:`handgrad.nn.functional.norm`::

        dx = (1/M) * inv_std * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

    The layer runs the fused pair ``fused_batchnorm_forward``/``fused_batchnorm_backward``
    (the same numbers in fewer passes over memory); ``batchnorm_forward``/
    ``batchnorm_backward`` beside them are the formula as written.

    Args:
        num_features: ``C``, the number of channels.
        eps: added to the variance (default 1e-5).
        momentum: running-statistics update rate (default 0.1), or ``None``.
        affine: learn ``gamma`` (ones) and ``beta`` (zeros) (default ``True``).
        track_running_stats: keep running statistics for evaluation (default ``True``; if
            ``False``, evaluation also normalises with the batch's own statistics).

    Attributes:
        weight (``gamma``), bias (``beta``): (C,) parameters.
        running_mean, running_var: (C,) buffers; num_batches_tracked: int64 buffer.
    """

    ranks: tuple[int, ...] = ()
    shape_text = ""
    relu: ClassVar[bool] = False  # BatchNormReLU2d: a ReLU applied in the same pass

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if num_features < 1:
            raise ValueError(f"{type(self).__name__} needs num_features >= 1, got {num_features}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be positive, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        kw = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.weight = Parameter(torch.ones(num_features, **kw)) if affine else None
        self.bias = Parameter(torch.zeros(num_features, **kw)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
            self.register_buffer(
                "num_batches_tracked", torch.zeros((), dtype=torch.long, device=device)
            )

    def forward(self, x: Tensor) -> Tensor:
        return self._normalise(x)

    def _normalise(self, x: Tensor, *residual: Tensor) -> Tensor:
        """The forward, with the residual of ``BatchNormAddReLU2d`` where given."""
        if x.ndim not in self.ranks or x.shape[1] != self.num_features:
            raise ValueError(
                f"{self._label()}: expected input {self.shape_text.format(C=self.num_features)}, "
                f"got {tuple(x.shape)}"
            )
        if residual:
            forward = partial(F.batchnorm_add_relu_forward, residual=residual[0])
        else:
            forward = F.batchnorm_relu_forward if self.relu else F.fused_batchnorm_forward
        if not (self.training or not self.track_running_stats):  # evaluation: running stats
            out, _ = forward(
                x, gamma=self.weight, beta=self.bias, running_mean=self.running_mean,
                running_var=self.running_var, training=False, eps=self.eps,
            )  # fmt: skip
            return out
        update = self.training and self.track_running_stats
        momentum = self.momentum
        if update:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average of all batches so far
                momentum = 1.0 / float(self.num_batches_tracked)
        out, cache = forward(
            x,
            gamma=self.weight,
            beta=self.bias,
            running_mean=self.running_mean if update else None,
            running_var=self.running_var if update else None,
            training=True,
            momentum=momentum or 0.0,
            eps=self.eps,
        )
        self.save_for_backward(cache)
        return out

    def bwd(self, out: Tensor, x: Tensor, *residual: Tensor) -> None:
        (cache,) = self.saved
        need_dx = self.needs_input_grad[0]
        if residual:  # BatchNormAddReLU2d: the residual gets the masked gradient
            dx, dgamma, dbeta, dres = F.batchnorm_add_relu_backward(
                out.g, out, cache, affine=self.affine, need_dx=need_dx,
                need_dresidual=self.needs_input_grad[1],
            )  # fmt: skip
            if dres is not None:
                residual[0].g = dres
        elif self.relu:  # the ReLU's mask is read from the output, `y > 0`
            dx, dgamma, dbeta = F.batchnorm_relu_backward(
                out.g, out, cache, affine=self.affine, need_dx=need_dx
            )
        else:
            dx, dgamma, dbeta = F.fused_batchnorm_backward(
                out.g, cache, affine=self.affine, need_dx=need_dx
            )
        if self.affine:
            self.weight.g, self.bias.g = dgamma, dbeta
        if dx is not None:
            x.g = dx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L) inputs over N (and L); see :class:`_BatchNorm`."""

    ranks = (2, 3)
    shape_text = "(N, {C}) or (N, {C}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W) inputs over N, H and W, one mean and variance per channel;
    see :class:`_BatchNorm`."""

    ranks = (4,)
    shape_text = "(N, {C}, H, W)"


class BatchNormReLU2d(_BatchNorm):
    """``BatchNorm2d`` followed by ``ReLU``, in one layer: ``y = max(bn(x), 0)``.

    The same parameters, buffers, state-dict names and numbers as ``BatchNorm2d(C)`` then
    ``ReLU()`` (up to float rounding), but faster and lighter: the forward writes the
    normalised, scaled, shifted and clamped values in one buffer, the backward takes the
    ReLU's mask from the output (``y > 0``) on its way into the batch-norm backward, and the
    batch norm's own output (the ReLU's input) is never kept for the backward. Evaluation
    uses the running statistics, as ``BatchNorm2d`` does. See
    :func:`handgrad.nn.functional.batchnorm_relu_forward`.
    """

    ranks = (4,)
    shape_text = "(N, {C}, H, W)"
    relu = True
    init_nonlinearity: ClassVar[str] = "relu"  # a conv feeding it takes Kaiming's gain


class BatchNormAddReLU2d(_BatchNorm):
    """``y = max(bn(x) + residual, 0)``: the end of a residual block, where the main path's
    last ``BatchNorm2d`` meets the skip path, in one layer with two inputs.

    The same parameters, buffers, state-dict names and numbers as ``BatchNorm2d(C)``, then
    ``+ residual``, then ``ReLU()`` (up to float rounding), in one pass that writes one buffer.
    Backward: the ReLU's mask ``g = dy * (y > 0)`` is read from the output; ``d(bn(x) +
    residual)/dresidual = 1``, so the residual's gradient is ``g`` itself and ``x``'s is the
    batch-norm backward of ``g``. See :func:`handgrad.nn.functional.batchnorm_add_relu_forward`.

    Shape:
        x, residual: (N, C, H, W) -> (N, C, H, W).

    Example:
        >>> tail = BatchNormAddReLU2d(8)
        >>> tail(torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    ranks = (4,)
    shape_text = "(N, {C}, H, W)"
    relu = True

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:  # type: ignore[override]
        return self._normalise(x, residual)


class LayerNorm(Module):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the statistics of each sample
    over its last ``len(normalized_shape)`` axes: independent of the batch, the same in training
    and evaluation. Same compact backward as batch norm, with the sums over those axes.

    Args:
        normalized_shape: the trailing shape to normalise over, e.g. ``C`` or ``(C, H, W)``.
        eps: added to the variance (default 1e-5).
        elementwise_affine: learn ``gamma`` (ones) and ``beta`` (zeros) of ``normalized_shape``.
        bias: learn ``beta`` too (default ``True``).
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"LayerNorm needs positive sizes, got {normalized_shape!r}")
        if eps <= 0:
            raise ValueError(f"LayerNorm: eps must be positive, got {eps}")
        self.normalized_shape, self.eps = shape, eps
        kw = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.weight = Parameter(torch.ones(shape, **kw)) if elementwise_affine else None
        self.bias = Parameter(torch.zeros(shape, **kw)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.normalized_shape)
        if x.ndim <= n or tuple(x.shape[-n:]) != self.normalized_shape:
            trailing = ", ".join(map(str, self.normalized_shape))
            raise ValueError(
                f"{self._label()}: expected input (N, ..., {trailing}), got {tuple(x.shape)}"
            )
        out, cache = F.layernorm_forward(x, self.weight, self.bias, n, eps=self.eps)
        self.save_for_backward(cache)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (cache,) = self.saved
        dx, dgamma, dbeta = F.layernorm_backward(
            out.g, cache, affine=self.weight is not None, need_dx=self.needs_input_grad[0]
        )
        if self.weight is not None:
            self.weight.g = dgamma
        if self.bias is not None:
            self.bias.g = dbeta
        if dx is not None:
            x.g = dx

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.weight is not None}"
