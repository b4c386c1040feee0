"""Memory layouts of (N, C, H, W) tensors: PyTorch's default NCHW, or channels-last (NHWC).

oneDNN's CPU convolutions run faster on channels-last tensors for few channels (2-3x at 16;
benchmarks/RESULTS.md, "Residual networks"), so the ``resnet`` recipe computes in it
(:class:`~handgrad.nn.layers.Conv2d`'s ``channels_last``); the compiled kernels read either.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Layout = Literal["nchw", "nhwc"]


def layout_of(*tensors: Tensor) -> Layout | None:
    """``"nchw"`` if every tensor is contiguous, ``"nhwc"`` if every one is channels-last
    contiguous (4-d), else ``None``. A tensor that is both (one channel, or 1x1 images) has the
    same memory either way, so it goes with the others."""
    if all(t.is_contiguous() for t in tensors):
        return "nchw"
    if all(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        return "nhwc"
    return None


def to_layout(t: Tensor, layout: Layout) -> Tensor:
    """``t`` in ``layout`` (a copy only where it is not already). Channels-last comes with
    channels-last strides even where both layouts are the same memory (one channel, or 1x1
    images): PyTorch's convolutions pick their algorithm by the strides, and the contiguous
    ones would make them compute, and answer, in NCHW."""
    if layout == "nchw":
        return t.contiguous()
    t = t.contiguous(memory_format=torch.channels_last)
    strides = _channels_last_strides(t.shape)
    return t if t.stride() == strides else t.as_strided(t.shape, strides, t.storage_offset())


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)
