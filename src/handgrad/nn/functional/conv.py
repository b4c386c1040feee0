"""2-d convolution (cross-correlation, as in every deep-learning library), forward and backward.

For an input ``x`` (N, C, H, W), a weight ``W`` (O, C/G, kh, kw) with ``G`` groups, stride ``s``,
padding ``p`` and dilation ``d``::

    y[n, o, a, b] = bias[o] + sum_{c, i, j} W[o, c, i, j] * xpad[n, g*C/G + c, a*s + i*d, b*s + j*d]

where ``xpad`` is ``x`` with ``p`` zeros on each side and ``g = o // (O/G)`` is ``o``'s group.

Two ways to compute it live here, with the same cache and the same gradients:

``im2col`` (lowering to one matrix product): copy every kh x kw patch of ``x`` into a column
    (``cols`` (N, C*kh*kw, Ho*Wo)); then ``y = W.view(O, -1) @ cols``. The backward is two more
    products, ``dW = sum_n dy[n] @ cols[n]^T`` (the columns are kept from the forward pass) and
    ``dcols = W^T @ dy``, and ``col2im`` (``fold``) adds each column of ``dcols`` back onto the
    pixels it was copied from (a pixel in several patches collects all of their gradients).
``direct`` (no column matrix): the forward is PyTorch's direct convolution kernel; the
    backward is written as two more convolutions, which is what the chain rule gives:
    ``dx`` is the *transposed* convolution of ``dy`` with the same ``W`` (the adjoint of the
    forward map), and ``dW`` is the correlation of ``x`` with ``dy`` -- itself a convolution once
    batch and channel swap roles (stride and dilation swap too).

Which is faster depends on the shape (numbers in ``benchmarks/RESULTS.md``): lowering
wins when a patch is short (``C/G * kh * kw`` small, e.g. a first layer on 1-channel images,
where the direct kernel is poorly vectorised); for wider layers the column matrix is ``kh*kw``
times the input and moving it through memory costs more than the arithmetic, so ``direct``
wins. ``method="auto"`` (the default) picks by that rule.

``channels_last=True`` gives channels-last (NHWC) outputs and runs ``direct`` on channels-last
memory, where oneDNN's kernels are faster for few channels; every backward formula above
reads either layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from handgrad.nn.functional import conv_fast
from handgrad.nn.functional.layout import to_layout

Method = Literal["auto", "im2col", "direct"]
METHODS = ("auto", "im2col", "direct")

#: ``auto`` lowers to im2col when a patch (C/G * kh * kw values) is at most this long.
IM2COL_MAX_PATCH = 32


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel size, stride, padding, dilation (each (rows, columns)) and groups."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel without padding in one group: each output reads one input pixel, so
        both gradients are plain matrix products over the positions."""
        return self.kernel == (1, 1) and self.padding == (0, 0) and self.groups == 1

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``out = floor((in + 2p - d (k - 1) - 1) / s) + 1`` along each spatial axis."""
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(
                (h, w), self.kernel, self.stride, self.padding, self.dilation, strict=True
            )
        )


class ConvCache(NamedTuple):
    """What ``conv2d_backward`` needs: the input, the weight, the columns (im2col only), the
    geometry, the method used and whether there is a bias."""

    x: Tensor
    weight: Tensor
    cols: Tensor | None
    geometry: ConvGeometry
    method: str
    has_bias: bool


def pick_method(method: Method, weight: Tensor) -> str:
    """Resolve ``auto``: ``im2col`` for short patches, else ``direct`` (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown convolution method {method!r}; choose from {METHODS}")
    if method != "auto":
        return method
    return "im2col" if weight[0].numel() <= IM2COL_MAX_PATCH else "direct"


# ---------------------------------------------------------------------------- im2col / col2im
def im2col(x: Tensor, geometry: ConvGeometry) -> Tensor:
    """Every receptive field of ``x`` as a column: (N, C, H, W) -> (N, C*kh*kw, Ho*Wo).

    Row ``(c, i, j)`` of column ``a*Wo + b`` is ``xpad[n, c, a*s + i*d, b*s + j*d]``, the same
    order as ``weight.view(O, -1)``. The patches are first a zero-copy ``as_strided`` view of
    the padded input (N, C, kh, kw, Ho, Wo); the one copy is the final ``reshape``. (On the
    CPU that is faster than ``torch.nn.functional.unfold``: benchmarks/RESULTS.md.)
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        geometry.kernel,
        geometry.stride,
        geometry.padding,
        geometry.dilation,
    )
    ho, wo = geometry.output_size(h, w)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))  # (N, C, H + 2ph, W + 2pw)
    s_n, s_c, s_h, s_w = x.stride()
    patches = x.as_strided(
        (n, c, kh, kw, ho, wo),
        (s_n, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w),
        x.storage_offset(),
    )  # (N, C, kh, kw, Ho, Wo), a view
    return patches.reshape(n, c * kh * kw, ho * wo)  # (N, C*kh*kw, Ho*Wo), one copy


def col2im(cols: Tensor, input_size: tuple[int, int], geometry: ConvGeometry) -> Tensor:
    """The adjoint of :func:`im2col`: add every column entry back onto the input pixel it was
    copied from. (N, C*kh*kw, Ho*Wo) -> (N, C, H, W). Padding positions are dropped.

    A 1x1 kernel without padding copied each pixel of a strided grid once, so its adjoint is
    that strided grid written back into zeros (the resnet's projections; faster than ``fold``).
    """
    if geometry.kernel == (1, 1) and geometry.padding == (0, 0):
        (h, w), (sh, sw) = input_size, geometry.stride
        n, c = cols.shape[0], cols.shape[1]
        dx = cols.new_zeros(n, c, h, w)
        grid = dx[:, :, ::sh, ::sw]  # (N, C, Ho, Wo), a view: the pixels the columns came from
        grid.copy_(cols.view(grid.shape))
        return dx
    return F.fold(
        cols,
        input_size,
        geometry.kernel,
        dilation=geometry.dilation,
        padding=geometry.padding,
        stride=geometry.stride,
    )


# ------------------------------------------------------------------------------ forward
def conv2d_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    geometry: ConvGeometry,
    *,
    method: Method = "auto",
    keep_cols: bool = True,
    channels_last: bool = False,
) -> tuple[Tensor, ConvCache]:
    """``y = conv(x, W) + b`` (see the module docstring). Returns ``y`` (N, O, Ho, Wo), contiguous
    (channels-last with ``channels_last``), and the cache for :func:`conv2d_backward`.

    With ``im2col``, ``keep_cols=True`` keeps the columns for the weight gradient (fastest);
    ``False`` drops them and the backward rebuilds them from ``x``, which saves ``kh*kw`` times
    the input's memory per layer for one more copy.

    With ``channels_last``, ``y`` is channels-last: ``direct`` (what ``"auto"`` picks then)
    takes ``x`` channels-last too (a copy where it is not), the memory layout oneDNN's CPU
    kernels run fastest; ``im2col`` lowers as always and lays out its output.
    """
    used = pick_method(method, weight)
    if channels_last and method == "auto":
        used = "direct"
    if used == "direct":
        w = weight
        if channels_last:
            x, w = to_layout(x, "nhwc"), to_layout(weight, "nhwc")  # w: O*C*kh*kw floats
        out = F.conv2d(
            x, w, bias, geometry.stride, geometry.padding, geometry.dilation, geometry.groups
        )
        if channels_last:  # one input channel: x and w look NCHW to oneDNN, and so does y
            out = to_layout(out, "nhwc")
        return out, ConvCache(x, weight, None, geometry, used, bias is not None)

    n, o, g = x.shape[0], weight.shape[0], geometry.groups
    ho, wo = geometry.output_size(x.shape[2], x.shape[3])
    cols = im2col(x, geometry)  # (N, K, L) with K = C*kh*kw, L = Ho*Wo
    out = torch.bmm(_batched_weight(weight, n, g), cols.view(n * g, -1, ho * wo))  # (N*G, O/G, L)
    out = out.view(n, o, ho, wo)  # (N, O, Ho, Wo)
    if bias is not None:
        out = out.add_(bias.view(1, o, 1, 1))
    if channels_last:
        out = to_layout(out, "nhwc")
    return out, ConvCache(x, weight, cols if keep_cols else None, geometry, used, bias is not None)


def _batched_weight(weight: Tensor, n: int, g: int) -> Tensor:
    """``W`` as (N*G, O/G, Kg), one (O/G, Kg) matrix per image and group, for ``bmm``.

    With one group this is a zero-stride ``expand`` (no copy). (``torch.matmul`` of a 2-d by
    a 3-d tensor does the same product, but through a general broadcasting path that is far
    slower for small matrices on the CPU.)
    """
    o = weight.shape[0]
    w = weight.reshape(1, g, o // g, -1)  # (1, G, O/G, Kg)
    return w.expand(n, g, o // g, w.shape[-1]).reshape(n * g, o // g, -1)


# ----------------------------------------------------------------------------- backward
def conv2d_backward(
    dout: Tensor, cache: ConvCache, *, need_dx: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Gradients ``(dx, dW, db)`` of ``y = conv(x, W) + b`` for the upstream ``dout`` = dL/dy.

    - ``db[o] = sum_{n, a, b} dy[n, o, a, b]``;
    - ``dW[o, c, i, j] = sum_{n, a, b} dy[n, o, a, b] * xpad[n, c, a*s + i*d, b*s + j*d]``;
    - ``dx[n, c, u, v] = sum over every (o, i, j, a, b) whose patch touched pixel (u, v) of
      dy[n, o, a, b] * W[o, c, i, j]``.

    ``dx`` is skipped (``None``) when ``need_dx`` is false (a first layer's input is data).
    """
    x, weight, cols, geo, method, has_bias = cache
    db = dout.sum((0, 2, 3)) if has_bias else None  # (O,)
    if method == "direct":
        dx = _input_grad_direct(dout, x, weight, geo) if need_dx else None
        return dx, _weight_grad_direct(dout, x, weight, geo), db

    if cols is None:  # dropped after the forward to save memory: rebuild them
        cols = im2col(x, geo)
    n, o, ho, wo = dout.shape
    g, L = geo.groups, ho * wo
    og, kg = o // g, cols.shape[1] // g  # per group: output channels, patch length C/G*kh*kw
    d3 = dout.reshape(n * g, og, L)  # (N*G, O/G, L), a view of a contiguous dy
    c3 = cols.view(n * g, kg, L)  # (N*G, Kg, L)
    if og * kg <= L * (og + kg):
        # one small product per image, then a sum over images: never copies the columns
        dw = torch.bmm(d3, c3.transpose(1, 2)).view(n, g, og, kg).sum(0)  # (G, O/G, Kg)
    else:
        # few output positions (deep layers): one product over all (image, position) pairs
        d_flat = d3.view(n, g, og, L).permute(1, 2, 0, 3).reshape(g, og, n * L)  # (G, O/G, N*L)
        c_flat = c3.view(n, g, kg, L).permute(1, 0, 3, 2).reshape(g, n * L, kg)  # (G, N*L, Kg)
        dw = torch.bmm(d_flat, c_flat)  # (G, O/G, Kg)
    dw = dw.reshape(weight.shape)  # (O, C/G, kh, kw)
    if not need_dx:
        return None, dw, db
    dcols = torch.bmm(_batched_weight(weight, n, g).transpose(1, 2), d3)  # (N*G, Kg, L)
    dx = col2im(dcols.view(n, g * kg, L), (x.shape[2], x.shape[3]), geo)  # (N, C, H, W)
    return dx, dw, db


def _input_grad_direct(dout: Tensor, x: Tensor, weight: Tensor, geo: ConvGeometry) -> Tensor:
    """``dx`` = the transposed convolution of ``dy`` with ``W``. When the strided windows do
    not reach the last rows/columns of ``x``, ``output_padding`` restores them (as zeros).

    With stride 1 (no dilation, one group) the transposed convolution is an ordinary one:
    ``dx[n, c, u, v] = sum_{o,i,j} dy[n, o, u + p - i, v + p - j] W[o, c, i, j]`` correlates
    ``dy``, padded by ``k - 1 - p``, with ``W`` flipped in both spatial axes and with its
    channel axes swapped. PyTorch's CPU forward kernel runs that up to 1.4x faster than its
    transposed one (benchmarks/RESULTS.md, "Residual networks").

    With stride 2 (3x3, padding 1) the compiled phase-by-phase version of
    :mod:`handgrad.nn.functional.conv_fast` computes the same sum where it is built; a 1x1
    kernel (no padding, one group) is a matrix product written to every stride-th pixel.
    """
    (kh, kw), (ph, pw) = geo.kernel, geo.padding
    if (
        geo.stride == (1, 1)
        and geo.dilation == (1, 1)
        and geo.groups == 1
        and 0 <= ph <= kh - 1
        and 0 <= pw <= kw - 1
    ):
        flipped = weight.transpose(0, 1).flip(2, 3)  # (C, O, kh, kw), W[o, c, kh-1-i, kw-1-j]
        return F.conv2d(dout, flipped, None, 1, (kh - 1 - ph, kw - 1 - pw))  # (N, C, H, W)
    if geo.pointwise:  # the pixels between the strides get 0
        return add_pointwise_input_grad(torch.zeros_like(x), dout, weight, geo.stride)
    input_size = (x.shape[2], x.shape[3])
    if conv_fast.applies_input_grad_s2(
        dout, weight, input_size, geo.stride, geo.padding, geo.dilation, geo.groups
    ):
        dx = conv_fast.conv3x3_input_grad_s2(dout, weight, input_size)
        if dx is not None:
            return dx
    ho, wo = dout.shape[2:]
    output_padding = tuple(
        size + 2 * p - ((out - 1) * s + d * (k - 1) + 1)
        for size, out, k, s, p, d in zip(
            x.shape[2:], (ho, wo), geo.kernel, geo.stride, geo.padding, geo.dilation, strict=True
        )
    )
    return F.conv_transpose2d(
        dout, weight, None, geo.stride, geo.padding, output_padding, geo.groups, geo.dilation
    )  # (N, C, H, W)


def add_pointwise_input_grad(
    dx: Tensor, dout: Tensor, weight: Tensor, stride: tuple[int, int]
) -> Tensor:
    """Adds the input gradient of a pointwise convolution (:attr:`ConvGeometry.pointwise`) to
    ``dx`` (N, C, H, W) in place and returns it: ``dx[n, c, a*s, b*s] += sum_o dy[n, o, a, b]
    W[o, c]``, one matrix product over the positions; the pixels between the strides get
    nothing. (A residual block adds its 1x1 projection's gradient straight into the main
    path's this way: no zero-filled tensor, no second sum over every pixel.)"""
    ho, wo = dout.shape[2], dout.shape[3]
    sh, sw = stride
    d = torch.tensordot(dout, weight[:, :, 0, 0], dims=([1], [0]))  # (N, Ho, Wo, C)
    dx[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw] += d.permute(0, 3, 1, 2)
    return dx


def _weight_grad_direct(dout: Tensor, x: Tensor, weight: Tensor, geo: ConvGeometry) -> Tensor:
    """``dW`` as a convolution: treat input channels as the batch and images as the channels.

    ``dW[o, c, i, j] = sum_{n,a,b} xpad[n, c, i*d + a*s, j*d + b*s] * dy[n, o, a, b]`` is a
    convolution of ``x^T`` (C/G, G*N, H, W) with the "kernel" ``dy^T`` (O, N, Ho, Wo), with the
    stride and the dilation swapped and ``G`` groups. Its output can be a little larger than
    (kh, kw) when the last strided window stops short of the border; the extra taps are cut.

    PyTorch's kernels run that (N, Ho, Wo)-sized "kernel" 1.4-2.7x slower than a matrix
    product would, so a 3x3 convolution (any stride) gets the same sum from
    :mod:`handgrad.nn.functional.conv_fast` (compiled C) where it is built, and a 1x1 one
    (no padding, one group) is that matrix product.
    """
    if conv_fast.applies(x, dout, geo.kernel, geo.stride, geo.padding, geo.dilation, geo.groups):
        dw = conv_fast.conv3x3_weight_grad(x, dout, geo.padding, geo.stride)
        if dw is not None:
            return dw
    ho, wo = dout.shape[2], dout.shape[3]
    if geo.pointwise:
        # a 1x1 kernel's "patch" is one pixel: dW[o, c] = sum_{n,a,b} dy[n,o,a,b] x[n,c,a*s,b*s],
        # one matrix product over the N*Ho*Wo positions
        (sh, sw) = geo.stride
        xs = x[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]  # (N, C, Ho, Wo), a view
        dw = torch.tensordot(dout, xs, dims=([0, 2, 3], [0, 2, 3]))  # (O, C)
        return dw.view(weight.shape)
    n, c, h, w = x.shape
    o, g = dout.shape[1], geo.groups
    x_t = x.reshape(n, g, c // g, h, w).transpose(0, 2).reshape(c // g, g * n, h, w)
    d_t = dout.reshape(n, g, o // g, ho, wo).permute(1, 2, 0, 3, 4).reshape(o, n, ho, wo)
    corr = F.conv2d(
        x_t, d_t, None, stride=geo.dilation, padding=geo.padding, dilation=geo.stride, groups=g
    )  # (C/G, O, >= kh, >= kw)
    kh, kw = geo.kernel
    return corr[:, :, :kh, :kw].transpose(0, 1).contiguous()  # (O, C/G, kh, kw)
