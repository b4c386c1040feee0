"""Pooling: the max or the mean of each window, and the global average over all positions.

Windows are taken exactly as a convolution's patches (:class:`~.conv.ConvGeometry`, groups 1):
a zero-copy ``as_strided`` view (N, C, Ho, Wo, kh, kw) of the (padded) input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from handgrad.nn.functional.conv import ConvGeometry, col2im


def _windows(x: Tensor, geo: ConvGeometry, pad_value: float) -> Tensor:
    """The pooling windows of ``x`` as a view (N, C, Ho, Wo, kh, kw) of the padded input."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo.kernel, geo.stride, geo.padding, geo.dilation
    ho, wo = geo.output_size(h, w)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=pad_value)  # (N, C, H + 2ph, W + 2pw)
    s_n, s_c, s_h, s_w = x.stride()
    return x.as_strided(
        (n, c, ho, wo, kh, kw),
        (s_n, s_c, sh * s_h, sw * s_w, dh * s_h, dw * s_w),
        x.storage_offset(),
    )


# ------------------------------------------------------------------------------ max pool
def maxpool2d_forward(x: Tensor, geo: ConvGeometry) -> tuple[Tensor, Tensor]:
    """``y[n, c, a, b] = max over the window at (a, b)`` (padding counts as -inf).

    Returns ``y`` (N, C, Ho, Wo) and the cache: for each output, the flat index ``u*W + v`` of
    the input pixel that won (int64, like ``torch.nn.functional.max_pool2d``'s indices). Ties go
    to the first position in the window, as in PyTorch.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo.kernel, geo.stride, geo.padding, geo.dilation
    ho, wo = geo.output_size(h, w)
    win = _windows(x, geo, float("-inf")).reshape(n, c, ho, wo, kh * kw)  # one copy
    out, arg = win.max(dim=-1)  # (N, C, Ho, Wo) each; arg = i*kw + j inside the window
    # where the winning tap (i, j) of window (a, b) sits in the unpadded input
    row = torch.arange(ho, device=x.device).view(ho, 1) * sh - ph  # (Ho, 1)
    col = torch.arange(wo, device=x.device).view(1, wo) * sw - pw  # (1, Wo)
    arg_i, arg_j = arg.div(kw, rounding_mode="floor"), arg.remainder(kw)
    indices = (row + arg_i * dh) * w + (col + arg_j * dw)  # (N, C, Ho, Wo)
    return out, indices


def maxpool2d_backward(dout: Tensor, indices: Tensor, input_shape: torch.Size) -> Tensor:
    """Each output's gradient goes to the one pixel that won its window; a pixel that won
    several overlapping windows collects them all (``scatter_add``)."""
    n, c, h, w = input_shape
    dx = dout.new_zeros(n, c, h * w)  # (N, C, H*W)
    dx.scatter_add_(2, indices.reshape(n, c, -1), dout.reshape(n, c, -1))
    return dx.view(n, c, h, w)


# -------------------------------------------------------------------------- average pool
def avgpool2d_forward(x: Tensor, geo: ConvGeometry) -> Tensor:
    """``y[n, c, a, b] = mean over the kh*kw window at (a, b)``; padded positions count as
    zeros in the mean (``count_include_pad=True``, PyTorch's default). Backward needs only the
    shapes, so nothing is cached."""
    return _windows(x, geo, 0.0).mean(dim=(-2, -1))  # (N, C, Ho, Wo), no copy of the windows


def avgpool2d_backward(dout: Tensor, input_shape: torch.Size, geo: ConvGeometry) -> Tensor:
    """Every pixel of a window gets ``dy / (kh*kw)``; ``col2im`` adds the shares of overlapping
    windows and drops those that fell on padding."""
    n, c, h, w = input_shape
    kk = geo.kernel[0] * geo.kernel[1]
    share = (dout / kk).reshape(n, c, 1, -1).expand(n, c, kk, dout.shape[2] * dout.shape[3])
    return col2im(share.reshape(n, c * kk, -1), (h, w), geo)  # (N, C, H, W)


# ------------------------------------------------------------------- global average pool
def global_avgpool_forward(x: Tensor) -> Tensor:
    """``y[n, c] = mean_{u, v} x[n, c, u, v]``: (N, C, H, W) -> (N, C), ready for a linear head."""
    return x.mean(dim=(2, 3))


def global_avgpool_backward(dout: Tensor, input_shape: torch.Size) -> Tensor:
    """``dx[n, c, u, v] = dy[n, c] / (H*W)``. Returned as a broadcast view (no H*W copy); like
    every gradient here it is read, never written in place."""
    n, c, h, w = input_shape
    return (dout / (h * w)).view(n, c, 1, 1).expand(n, c, h, w)
