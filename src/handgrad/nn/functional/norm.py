"""Normalisation: batch norm (statistics over the batch) and layer norm (over each sample).

Both compute ``xhat = (x - mean) * inv_std`` with ``inv_std = 1 / sqrt(var + eps)`` (biased
variance) and ``y = gamma * xhat + beta``; they differ in which axes the statistics span. With
``M`` values per statistic and ``dxhat = dy * gamma``, the backward of both is the compact
formula (it adds the three paths from ``x`` to ``y``: directly, through the mean and through
the variance)::

    dx = (1/M) * inv_std * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

    dgamma = sum(dy * xhat),  dbeta = sum(dy)     (summed over the axes gamma is shared along)

``xhat`` is recomputed in the backward from ``x`` (which the layer holds anyway) instead of
being stored: one cheap element-wise pass saves an activation-sized tensor per layer.

Batch norm comes twice. :func:`batchnorm_forward`/:func:`batchnorm_backward` are the formula
as written above, to read and to check against. :func:`fused_batchnorm_forward`/
:func:`fused_batchnorm_backward` compute the same numbers in fewer passes over memory, and
:func:`batchnorm_relu_forward`/:func:`batchnorm_relu_backward` add a ReLU to them: these are
what the layers run. Tests hold the pairs equal; the caches are interchangeable. In training
on float32 CPU tensors the fused pair runs as compiled C where it is built
(:mod:`handgrad.nn.functional.norm_fast`: a channel at a time, so that its passes read the
cache), with the ATen formulation here as its fallback and reference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from handgrad.nn.functional import norm_fast
from handgrad.nn.functional.layout import layout_of, to_layout


class NormCache(NamedTuple):
    """``x``, its per-statistic ``mean`` and ``inv_std`` and ``gamma`` (or ``None``), each
    shaped to broadcast against ``x``, and the axes the statistics were taken over."""

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


def _channel_axes(x: Tensor, training: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Batch norm's summed axes (all but the channel axis 1) and the (1, C, 1, ...) shape that
    broadcasts a per-channel value against ``x``; refuses a batch with one value per channel."""
    dims = (0, *range(2, x.ndim))
    if training and _count(x, dims) < 2:
        raise ValueError(
            f"batch norm in training needs more than one value per channel, got input of "
            f"shape {tuple(x.shape)}; use a batch larger than 1 or call .eval()"
        )
    return dims, (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _update_running(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    m: int,
    momentum: float,
) -> None:
    """PyTorch's convention: ``running += momentum * (batch - running)``, with the *unbiased*
    variance ``var * M / (M - 1)`` going in."""
    if running_mean is None or running_var is None:
        return
    with torch.no_grad():
        running_mean.lerp_(mean.detach().reshape(-1), momentum)
        running_var.lerp_(var.detach().reshape(-1) * (m / (m - 1)), momentum)


def _running_stats(
    running_mean: Tensor | None, running_var: Tensor | None, shape: tuple[int, ...], eps: float
) -> tuple[Tensor, Tensor]:
    """``(mean, inv_std)`` from the running statistics, shaped ``shape``, for evaluation."""
    if running_mean is None or running_var is None:
        raise ValueError("batch norm in evaluation needs running statistics")
    return running_mean.view(shape), torch.rsqrt(running_var + eps).view(shape)


# -------------------------------------------------------------------- batch norm, readable
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

    Training: normalise with this batch's mean and biased variance, and move the running
    statistics (if given) towards them in place. Evaluation: normalise with the running
    statistics; no cache, since a sample's output no longer depends on the rest of the batch.
    """
    dims, shape = _channel_axes(x, training)
    if training:
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)  # (1, C, 1, ...)
        _update_running(running_mean, running_var, mean, var, _count(x, dims), momentum)
        inv_std = torch.rsqrt(var + eps)  # (1, C, 1, ...)
    else:
        mean, inv_std = _running_stats(running_mean, running_var, shape, eps)
    g = None if gamma is None else gamma.view(shape)
    out = (x - mean) * inv_std  # xhat, x's shape
    if g is not None:
        out = out * g
    if beta is not None:
        out = out + beta.view(shape)
    return out, (NormCache(x, mean, inv_std, g, dims) if training else None)


def batchnorm_backward(dout: Tensor, cache: NormCache) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dgamma, dbeta)`` of training-mode batch norm: the compact formula with the sums
    over the batch (and spatial) axes; ``dgamma`` and ``dbeta`` are (C,)."""
    x, mean, inv_std, gamma, dims = cache
    m = _count(x, dims)
    xhat = (x - mean) * inv_std  # recomputed, x's shape
    dgamma, dbeta = (dout * xhat).sum(dims), dout.sum(dims)  # (C,) each
    dxhat = dout if gamma is None else dout * gamma  # x's shape
    sum_dxhat = dxhat.sum(dims, keepdim=True)  # (1, C, 1, ...)
    sum_dxhat_xhat = (dxhat * xhat).sum(dims, keepdim=True)  # (1, C, 1, ...)
    dx = inv_std / m * (m * dxhat - sum_dxhat - xhat * sum_dxhat_xhat)  # x's shape
    return dx, dgamma, dbeta


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
    normalised axes; ``dgamma``/``dbeta`` sum over the leading (batch) axes. ``gamma`` varies
    along the normalised axes, so ``dxhat = dy * gamma`` is formed explicitly."""
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


# ----------------------------------------------------------------------- batch norm, fused
# The same numbers as the readable pair, in fewer passes over memory. Three CPU habits shape
# it (figures in benchmarks/RESULTS.md, "Layers and the cnn"): work on x viewed as (N, C, L),
# sum along the contiguous L before the batch, and write every per-channel affine map as ONE
# addcmul whose per-channel operand is spread over a (1, C, L) plane (_plane), because ATen's
# element-wise loops vectorise only when at most one operand broadcasts along the last axis.
def fused_batchnorm_forward(
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
    """:func:`batchnorm_forward`, computed as ``y = x * scale + shift`` per channel with
    ``scale = gamma * inv_std`` and ``shift = beta - mean * scale``: one pass over ``x``."""
    return _fused_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, False)


def _fused_forward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
    residual: Tensor | None = None,
) -> tuple[Tensor, NormCache | None]:
    """The fused forward, then a ReLU when ``relu`` (after adding ``residual``, where given:
    ``relu`` is then true). In training on float32 CPU tensors the
    compiled channel-at-a-time version (:mod:`handgrad.nn.functional.norm_fast`) computes the
    same numbers where it is built; the ATen formulation below is the fallback and the
    reference the tests hold it to."""
    dims, shape = _channel_axes(x, training)
    compiled = norm_fast.applies(x, gamma, beta) and (
        residual is None
        or (
            residual.shape == x.shape
            and layout_of(x, residual) is not None
            and norm_fast.applies(residual)
        )
    )
    if training and compiled:
        done = norm_fast.forward(x, gamma, beta, eps, relu, residual)
        if done is not None:
            out, mean64, var64 = done  # (C,) each, float64
            mean, var = mean64.to(x.dtype), var64.to(x.dtype)
            _update_running(running_mean, running_var, mean, var, _count(x, dims), momentum)
            inv_std = (var64 + eps).rsqrt_().to(x.dtype)
            g = None if gamma is None else gamma.view(shape)
            return out, NormCache(x, mean.view(shape), inv_std.view(shape), g, dims)
    # (N, C, L): a view of NCHW memory (a copy of channels-last); L = H*W, or 1 for (N, C)
    x3 = x.reshape(x.shape[0], x.shape[1], -1) if training or layout_of(x) != "nhwc" else None
    if training:
        m = _count(x, dims)
        mean = x3.sum(2).sum(0).div_(m).view(1, -1, 1)  # (1, C, 1)
        var = (x3 - mean).square_().sum(2).sum(0).div_(m)  # (C,), two-pass: no cancellation
        _update_running(running_mean, running_var, mean, var, m, momentum)
        inv_std = (var + eps).rsqrt_().view(1, -1, 1)  # (1, C, 1)
    else:
        mean, inv_std = _running_stats(running_mean, running_var, (1, -1, 1), eps)
    scale = inv_std if gamma is None else gamma.view(1, -1, 1) * inv_std  # (1, C, 1)
    if beta is None:
        shift = -mean * scale
    else:
        shift = torch.addcmul(beta.view(1, -1, 1), mean, scale, value=-1.0)  # beta - mean*scale
    if layout_of(x) == "nhwc":  # keep the layout: per-channel maps broadcast over (N, C, H, W)
        out = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
    else:
        out = torch.addcmul(shift, x3, _plane(scale, x3)).view(x.shape)
    if residual is not None:
        out = out.add_(residual)  # the buffer is out's own: add in place
    if relu:
        out = out.clamp_min_(0.0)
    if not training:
        return out, None
    g = None if gamma is None else gamma.view(shape)
    return out, NormCache(x, mean.view(shape), inv_std.view(shape), g, dims)


def fused_batchnorm_backward(
    dout: Tensor, cache: NormCache, *, affine: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`batchnorm_backward` in fewer passes; ``dx`` or the parameter gradients may be
    skipped (``need_dx``, ``affine``). ``gamma`` is constant along the summed axes, so
    ``sum(dxhat) = gamma * sum(dy)`` and ``sum(dxhat * xhat) = gamma * sum(dy * xhat)``: the
    formula needs only the two parameter gradients, and ``dx = a * dy + b * xhat + c`` with
    per-channel ``a, b, c``."""
    done = _compiled_backward(dout, None, cache, affine, need_dx)
    if done is not None:
        return done[:3]
    x = cache.x
    dy = dout.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L), as in the forward
    return _fused_backward(dy, cache, affine=affine, need_dx=need_dx)


def _compiled_backward(
    dout: Tensor,
    out: Tensor | None,
    cache: NormCache,
    affine: bool,
    need_dx: bool,
    need_dresidual: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None] | None:
    """The backward by :mod:`handgrad.nn.functional.norm_fast` where it applies (float32 CPU
    tensors, the library built): ``(dx, dgamma, dbeta, dresidual)``; ``None`` otherwise."""
    x, mean, inv_std, gamma, _ = cache
    g = None if gamma is None else gamma.reshape(-1)
    layout = layout_of(x)
    if layout is None or not (norm_fast.applies(x, g) and dout.shape == x.shape):
        return None
    # a gradient in another layout (a broadcast view from a pooling layer, say) is copied
    # once: cheaper than the ATen formulation's passes
    dout = to_layout(dout, layout)
    if not norm_fast.applies(dout):
        return None
    if out is not None and not (out.shape == x.shape and layout_of(x, out) is not None):
        return None
    done = norm_fast.backward(dout, out, x, g, mean, inv_std, need_dx, need_dresidual)
    if done is None or affine:
        return done
    return done[0], None, None, done[3]


def _fused_backward(
    dy: Tensor, cache: NormCache, *, affine: bool, need_dx: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The fused backward for ``dy`` (N, C, L), the gradient at the batch norm's output."""
    x, mean, inv_std, gamma, dims = cache
    m = _count(x, dims)
    x3 = x.reshape(dy.shape)  # (N, C, L)
    mean, inv_std = mean.reshape(1, -1, 1), inv_std.reshape(1, -1, 1)  # (1, C, 1)
    # One activation-sized buffer serves as xhat, then dy * xhat, then dx: the backward
    # allocates nothing else of that size (fresh memory costs page faults).
    buf = torch.addcmul(_plane(-mean * inv_std, x3), x3, _plane(inv_std, x3))  # xhat
    sum_dy = dy.sum(2).sum(0).view(1, -1, 1)  # (1, C, 1)
    sum_dy_xhat = buf.mul_(dy).sum(2).sum(0).view(1, -1, 1)  # (1, C, 1)
    dgamma = sum_dy_xhat.view(-1) if affine else None
    dbeta = sum_dy.view(-1) if affine else None
    if not need_dx:
        return None, dgamma, dbeta
    a = inv_std if gamma is None else gamma.reshape(1, -1, 1) * inv_std  # (1, C, 1)
    k = a * (-1.0 / m)  # (1, C, 1)
    # dx = a/M (M dy - sum(dy) - xhat sum(dy xhat)) = a dy + b xhat + c with b = k sum(dy xhat)
    # and c = k sum(dy); xhat = (x - mean) inv_std folds into b' = b inv_std, c' = c - b' mean.
    b = k * sum_dy_xhat * inv_std  # (1, C, 1)
    c = torch.addcmul(k * sum_dy, b, mean, value=-1.0)  # (1, C, 1)
    dx = torch.addcmul(_plane(c, x3), x3, _plane(b, x3), out=buf)  # (N, C, L), in buf
    return dx.addcmul_(dy, a).view(x.shape), dgamma, dbeta


def _plane(v: Tensor, like: Tensor) -> Tensor:
    """Per-channel values ``v`` (1, C, 1) written out over one sample's (1, C, L) plane (1/N
    of the activation), so that an ``addcmul`` with it keeps ATen's vectorised loop."""
    return v.expand(1, like.shape[1], like.shape[2]).contiguous()


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
    """``y = max(gamma * (x - mean) * inv_std + beta, 0)``: the fused batch norm, then a ReLU
    that clamps its output buffer in place. Only ``x`` and ``y`` stay alive for the backward
    (both held anyway), not the batch norm's output as with two separate layers."""
    return _fused_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, True)


def batchnorm_relu_backward(
    dout: Tensor, out: Tensor, cache: NormCache, *, affine: bool = True, need_dx: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_relu_forward`, given its output ``out``.

    The ReLU passes the gradient where ``y > 0``, exactly where its input was positive, so the
    batch norm's output gradient is ``dy * (y > 0)``, read from ``out`` by ATen's
    ``threshold_backward`` (no mask stored); then the fused batch-norm backward.
    """
    return _behind_relu_backward(dout, out, cache, affine, need_dx, need_masked=False)[:3]


def _behind_relu_backward(
    dout: Tensor, out: Tensor, cache: NormCache, affine: bool, need_dx: bool, need_masked: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta, masked)`` of a batch norm whose output (plus a residual, for
    :func:`batchnorm_add_relu_backward`) went through a ReLU, ``out`` being the ReLU's output:
    compiled where it applies, else ATen. ``masked = dy * (y > 0)`` only with ``need_masked``."""
    done = _compiled_backward(dout, out, cache, affine, need_dx, need_masked)
    if done is not None:
        return done
    x = cache.x
    masked = torch.ops.aten.threshold_backward(dout, out, 0.0)  # dy * (y > 0), x's shape
    dy = masked.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L)
    dx, dgamma, dbeta = _fused_backward(dy, cache, affine=affine, need_dx=need_dx)
    return dx, dgamma, dbeta, masked if need_masked else None


def batchnorm_add_relu_forward(
    x: Tensor,
    residual: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, NormCache | None]:
    """``y = max(bn(x) + residual, 0)``: the end of a residual block, where the main path's
    last batch norm meets the skip path. One buffer is written (no batch-norm output, no sum
    before the ReLU); only ``x`` and ``y`` stay alive for the backward. ``residual`` has
    ``x``'s shape."""
    if residual.shape != x.shape:
        raise ValueError(
            f"batch norm + residual: the residual's shape {tuple(residual.shape)} is not the "
            f"input's {tuple(x.shape)}"
        )
    return _fused_forward(
        x, gamma, beta, running_mean, running_var, training, momentum, eps, True, residual
    )


def batchnorm_add_relu_backward(
    dout: Tensor,
    out: Tensor,
    cache: NormCache,
    *,
    affine: bool = True,
    need_dx: bool = True,
    need_dresidual: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dgamma, dbeta, dresidual)`` of :func:`batchnorm_add_relu_forward`, given its
    output ``out``.

    ``y = relu(z)`` with ``z = bn(x) + residual``: the ReLU passes ``g = dy * (y > 0)`` back
    to ``z``, and ``dz/dresidual = 1``, so ``dresidual = g``, while ``x`` gets the batch-norm
    backward of ``g``. (The compiled kernel writes ``g`` while it sums it.)
    """
    return _behind_relu_backward(dout, out, cache, affine, need_dx, need_dresidual)
