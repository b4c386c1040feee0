"""Normalisation: batch norm (statistics over the batch) and layer norm (over each sample).

Both compute ``xhat = (x - mean) * inv_std`` with ``inv_std = 1 / sqrt(var + eps)`` (biased
variance) and ``y = gamma * xhat + beta``; they differ in which axes the statistics span. With
``M`` values per statistic and ``dxhat = dy * gamma``, the backward of both is the compact
formula (it adds the three paths from ``x`` to ``y``: directly, through the mean and through
the variance)::

    dx = (1/M) * inv_std * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

    dgamma = sum(dy * xhat),  dbeta = sum(dy)     (summed over the axes gamma is shared along)

``xhat`` is recomputed in the backward from ``x`` (which the layer holds anyway) instead of
being stored: one cheap element-wise pass saves an activation-sized tensor per layer, and the
recomputed ``xhat`` then serves as the memory that ``dx`` is written into.

``batchnorm_relu_forward``/``batchnorm_relu_backward`` are batch norm followed by a ReLU in one
pair (the ``cnn`` recipe's blocks): the ReLU clamps the batch norm's output buffer in place, and
its mask ``y > 0`` is read from the output on the way into the same compact backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class NormCache(NamedTuple):
    """``x``, its per-statistic ``mean`` and ``inv_std`` and ``gamma`` (or ``None``), each
    broadcastable to ``x`` (for batch norm: to ``x`` viewed as (N, C, L)), and the axes the
    statistics were taken over."""

    x: Tensor
    mean: Tensor
    inv_std: Tensor
    gamma: Tensor | None
    dims: tuple[int, ...]


def _count(x: Tensor, dims: tuple[int, ...]) -> int:
    """How many values each statistic is taken over (``M``)."""
    m = 1
    for d in dims:
        m *= x.shape[d]
    return m


# ---------------------------------------------------------------------------- batch norm
def batchnorm_forward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, NormCache | None]:
    """Batch norm over every axis but the channel axis 1 of ``x`` (N, C) or (N, C, ...).

    Training: normalise with this batch's mean and biased variance, and update the running
    statistics in place with PyTorch's convention ``running = (1 - momentum) * running +
    momentum * batch_stat``, where the variance that goes in is the *unbiased* one
    (``var * M / (M - 1)``, ``M`` values per channel). Evaluation: normalise with the running
    statistics (no cache: the output of a sample no longer depends on the rest of the batch).
    """
    dims = (0, *range(2, x.ndim))
    if training and _count(x, dims) < 2:
        raise ValueError(
            f"batch norm in training needs more than one value per channel, got input of "
            f"shape {tuple(x.shape)}; use a batch larger than 1 or call .eval()"
        )
    x3 = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L): a view; L = H*W, or 1 for (N, C)
    mean, inv_std = _bn_statistics(
        x3, running_mean, running_var, training=training, momentum=momentum, eps=eps
    )
    out = _bn_affine(x3, mean, inv_std, gamma, beta).view(x.shape)
    if not training:
        return out, None
    g = None if gamma is None else gamma.view(1, -1, 1)
    return out, NormCache(x, mean, inv_std, g, dims)


def _bn_statistics(
    x3: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``(mean, inv_std)``, each (1, C, 1), for ``x3`` (N, C, L): the running statistics in
    evaluation, else this batch's (and the running ones move towards them)."""
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch norm in evaluation needs running statistics")
        mean, inv_std = running_mean.view(1, -1, 1), torch.rsqrt(running_var + eps).view(1, -1, 1)
        return mean, inv_std
    m = x3.shape[0] * x3.shape[2]  # values per channel
    # Sums along the contiguous last axis first, then over the batch: about 2x faster on the
    # CPU than one reduction over (0, 2, 3), and the two passes together several times faster
    # than torch.var_mean (a Welford reduction) at the cnn's shapes.
    mean = x3.sum(2).sum(0).div_(m).view(1, -1, 1)  # (1, C, 1)
    var = (x3 - mean).square_().sum(2).sum(0).div_(m)  # (C,), two-pass: no cancellation
    if running_mean is not None and running_var is not None:
        with torch.no_grad():  # running += momentum * (batch - running)
            running_mean.lerp_(mean.detach().view(-1), momentum)
            running_var.lerp_(var.detach() * (m / (m - 1)), momentum)
    inv_std = (var + eps).rsqrt_().view(1, -1, 1)  # (1, C, 1)
    return mean, inv_std


def _plane(v: Tensor, like: Tensor) -> Tensor:
    """Per-channel values ``v`` (1, C, 1) written out over one sample's (1, C, L) plane.

    Why: ATen's element-wise CPU loops are vectorised only when at most ONE operand is
    broadcast along the innermost axis. ``addcmul(shift, x, scale)`` with both ``shift`` and
    ``scale`` of shape (1, C, 1) has two, falls back to a scalar loop and measured 5x to 10x
    slower than with ``scale`` spread over (1, C, L) (C*L values: 1/N of the activation, so
    writing them costs nothing that shows). Same values, same arithmetic, same result."""
    return v.expand(1, like.shape[1], like.shape[2]).contiguous()


def _bn_affine(
    x: Tensor, mean: Tensor, inv_std: Tensor, gamma: Tensor | None, beta: Tensor | None
) -> Tensor:
    """``y = gamma * (x - mean) * inv_std + beta`` for ``x`` (N, C, L), folded per channel into
    ``y = x * scale + shift``: one pass over ``x`` (one ``addcmul``) instead of four. (The 3-d
    view matters: the same broadcast over (N, C, H, W) measured about 1.7x slower.)"""
    scale = inv_std if gamma is None else gamma.view(1, -1, 1) * inv_std  # (1, C, 1)
    if beta is None:
        shift = -mean * scale
    else:
        shift = torch.addcmul(beta.view(1, -1, 1), mean, scale, value=-1.0)  # beta - mean*scale
    return torch.addcmul(shift, x, _plane(scale, x))  # (N, C, L)


def batchnorm_backward(
    dout: Tensor, cache: NormCache, *, affine: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta)`` of training-mode batch norm: the compact formula, with the sums
    over the batch and spatial axes; ``dgamma``/``dbeta`` are (C,).

    ``gamma`` is constant along the summed axes, so ``sum(dxhat) = gamma * sum(dy)`` and
    ``sum(dxhat * xhat) = gamma * sum(dy * xhat)``: the two sums the formula needs are the
    two parameter gradients, and ``dx = a * dy + b * xhat + c`` with per-channel ``a, b, c``.
    """
    x = cache.x
    dy = dout.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L), as in the forward
    return _bn_backward(dy, cache, affine=affine, need_dx=need_dx)


def _bn_backward(
    dy: Tensor, cache: NormCache, *, affine: bool, need_dx: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The compact backward for ``dy`` (N, C, L), the gradient at the batch norm's output."""
    x, mean, inv_std, gamma, dims = cache
    m = _count(x, dims)
    x3 = x.reshape(dy.shape)  # (N, C, L), as in the forward
    # One activation-sized buffer does three jobs, so that the backward allocates nothing
    # else (a fresh buffer of that size costs page faults, measured as much as two passes):
    # xhat (recomputed), then dy * xhat (summed), then dx.
    buf = torch.addcmul(_plane(-mean * inv_std, x3), x3, _plane(inv_std, x3))  # xhat
    sum_dy = dy.sum(2).sum(0).view(1, -1, 1)  # (1, C, 1)
    sum_dy_xhat = buf.mul_(dy).sum(2).sum(0).view(1, -1, 1)  # (1, C, 1)
    dgamma = sum_dy_xhat.view(-1) if affine else None
    dbeta = sum_dy.view(-1) if affine else None
    if not need_dx:
        return None, dgamma, dbeta
    a = inv_std if gamma is None else gamma * inv_std  # (1, C, 1)
    k = a * (-1.0 / m)  # (1, C, 1)
    # dx = a/M (M dy - sum(dy) - xhat sum(dy xhat)) = a dy + b xhat + c, with b = k sum(dy
    # xhat) and c = k sum(dy); xhat = (x - mean) inv_std, so b xhat + c = x b' + c' with
    # b' = b inv_std, c' = c - b' mean: xhat is folded in, as it was computed above.
    b = k * sum_dy_xhat * inv_std  # (1, C, 1)
    c = torch.addcmul(k * sum_dy, b, mean, value=-1.0)  # (1, C, 1)
    dx = torch.addcmul(_plane(c, x3), x3, _plane(b, x3), out=buf)  # (N, C, L), in buf
    return dx.addcmul_(dy, a).view(x.shape), dgamma, dbeta  # (one broadcast operand: fast)


# ------------------------------------------------------------------- batch norm + ReLU
def batchnorm_relu_forward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, NormCache | None]:
    """``y = max(gamma * (x - mean) * inv_std + beta, 0)``: batch norm and a ReLU in one.

    The statistics as in :func:`batchnorm_forward`, then one ``addcmul`` writes the
    normalised, scaled and shifted values and the ReLU clamps them in that same buffer
    (``clamp_min_``, in place). Apart from one activation-sized pass, this saves memory: the
    separate layers keep the batch norm's output (the ReLU's input) alive until the backward;
    here only ``x`` and ``y`` are, and both are held anyway (``y`` by the next layer).
    """
    out, cache = batchnorm_forward(
        x, gamma, beta, running_mean, running_var, training=training, momentum=momentum, eps=eps
    )
    return out.clamp_min_(0.0), cache  # in place: no second activation-sized tensor


def batchnorm_relu_backward(
    dout: Tensor, out: Tensor, cache: NormCache, *, affine: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_relu_forward`, given its output ``out``.

    The ReLU passes the gradient where ``y > 0`` (exactly where its input was positive), so
    the batch norm's output gradient is ``dy * (y > 0)``: one pass with ATen's
    ``threshold_backward`` (PyTorch's own ReLU backward kernel), read from ``out``, which no
    extra mask has to be stored for. Then the compact batch-norm backward on that gradient.
    """
    x = cache.x
    masked = torch.ops.aten.threshold_backward(dout, out, 0.0)  # dy * (y > 0), x's shape
    dy = masked.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L)
    return _bn_backward(dy, cache, affine=affine, need_dx=need_dx)


# ---------------------------------------------------------------------------- layer norm
def layernorm_forward(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, n_dims: int, *, eps: float = 1e-5
) -> tuple[Tensor, NormCache]:
    """Layer norm over the last ``n_dims`` axes of ``x``: each sample is normalised by its own
    mean and (biased) variance; ``gamma``/``beta`` have the shape of those axes."""
    dims = tuple(range(x.ndim - n_dims, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)  # (N, ..., 1, ..., 1)
    inv_std = torch.rsqrt(var + eps)
    xhat = (x - mean).mul_(inv_std)  # x's shape
    if gamma is not None:
        out = xhat.mul_(gamma) if beta is None else torch.addcmul(beta, xhat, gamma)
    else:
        out = xhat if beta is None else xhat.add_(beta)
    return out, NormCache(x, mean, inv_std, gamma, dims)


def layernorm_backward(
    dout: Tensor, cache: NormCache, *, affine: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta)`` of layer norm: the compact formula with the sums over the
    normalised axes; ``dgamma``/``dbeta`` sum over the leading (batch) axes. Here ``gamma``
    varies along the summed axes, so ``dxhat = dy * gamma`` is formed explicitly."""
    x, mean, inv_std, gamma, dims = cache
    m = _count(x, dims)
    batch_dims = tuple(range(x.ndim - len(dims)))
    xhat = (x - mean).mul_(inv_std)  # recomputed
    dgamma = (dout * xhat).sum(batch_dims) if affine else None
    dbeta = dout.sum(batch_dims) if affine else None
    if not need_dx:
        return None, dgamma, dbeta
    dxhat = dout if gamma is None else dout * gamma  # x's shape
    sum_dxhat = dxhat.sum(dims, keepdim=True)  # (N, ..., 1)
    sum_dxhat_xhat = (dxhat * xhat).sum(dims, keepdim=True)  # (N, ..., 1)
    # dx = inv_std/M * (M dxhat - sum(dxhat) - xhat * sum(dxhat xhat)), in xhat's memory
    dx = xhat.mul_(-sum_dxhat_xhat).sub_(sum_dxhat).add_(dxhat, alpha=m)
    return dx.mul_(inv_std / m), dgamma, dbeta
