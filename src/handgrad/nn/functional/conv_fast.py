"""The compiled weight gradient of 3x3, stride-1 convolutions (``conv_wgrad.c``).

``dW[o, c, i, j] = sum_{n, a, b} dy[n, o, a, b] * xpad[n, c, a + i, b + j]`` is the same sum as
:func:`handgrad.nn.functional.conv.conv2d_backward`'s ``direct`` method, which runs it as a
convolution with an (N, Ho, Wo) "kernel": a shape PyTorch's CPU kernels handle 2-3x slower
than their own weight-gradient routine (benchmarks/RESULTS.md, "Residual networks"). The C file
writes it as nine shifted dot products over a padded grid (its header says how); here is only
when it applies and the call.

It applies to float32, contiguous, CPU, one group, stride 1, dilation 1, a 3x3 kernel and
padding at most 1 (the ``resnet`` and ``cnn`` blocks' shape). Anywhere else, or where it cannot
be built (no C compiler, ``HANDGRAD_FAST=0``), :func:`conv3x3_weight_grad` returns ``None``
and the readable convolution runs. Tests hold the two equal (tests/nn/test_conv_fast.py).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from handgrad._build import Build, c_library

_SOURCE = Path(__file__).with_name("conv_wgrad.c")
_V = 16  # floats per vector in conv_wgrad.c: grid rows are padded to a multiple of it


def _load() -> ctypes.CDLL:
    lib = c_library(_SOURCE, ["-O3", "-pthread"])
    fn = lib.handgrad_conv3x3_wgrad
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 8 + [ctypes.c_int]
    fn.restype = None
    return lib


#: The compiled library, built on first use (``build.get()``; ``None`` where it cannot be).
build = Build(_SOURCE, _load)

# The grids are two activation-sized buffers: kept between calls, because fresh memory of that
# size costs page faults on every first touch (a lock: a server may train in threads).
_workspace: list[Tensor] = [torch.empty(0)]
_lock = threading.Lock()


def applies(x: Tensor, dout: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> bool:  # fmt: skip
    """Whether :func:`conv3x3_weight_grad` computes this weight gradient (see the module doc)."""
    return (
        x.dtype == torch.float32
        and dout.dtype == torch.float32
        and x.device.type == "cpu"
        and dout.device.type == "cpu"
        and x.dim() == 4
        and kernel == (3, 3)
        and stride == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and all(0 <= p <= 1 for p in padding)
        and dout.shape[2] == x.shape[2] + 2 * padding[0] - 2
        and dout.shape[3] == x.shape[3] + 2 * padding[1] - 2
        and dout.shape[2] > 0
        and dout.shape[3] > 0
    )


def conv3x3_weight_grad(x: Tensor, dout: Tensor, padding: tuple[int, int]) -> Tensor | None:
    """``dW`` (O, C, 3, 3) of a 3x3 stride-1 convolution of ``x`` (N, C, H, W) with gradient
    ``dout`` (N, O, Ho, Wo) at its output; ``None`` where the compiled code is unavailable.
    The caller checks :func:`applies` first."""
    lib = build.get()
    if lib is None:
        return None
    x, dout = x.contiguous(), dout.contiguous()
    n, c, h, w = x.shape
    o = dout.shape[1]
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    grid = -(-(n * hp * wp + 2 * wp + 2) // _V) * _V + _V  # see conv_wgrad.c
    dw = torch.empty(o, c, 3, 3)
    with _lock:
        if _workspace[0].numel() < (c + o) * grid:
            _workspace[0] = torch.empty((c + o) * grid)
        space = _workspace[0]
        xg, dyg = space.data_ptr(), space.data_ptr() + 4 * c * grid
        lib.handgrad_conv3x3_wgrad(
            x.data_ptr(), dout.data_ptr(), dw.data_ptr(), xg, dyg,
            n, c, h, w, o, ph, pw, grid, torch.get_num_threads(),
        )  # fmt: skip
    return dw
