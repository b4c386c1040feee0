"""The compiled weight gradient of 3x3 convolutions (``conv_wgrad.c``).

``dW[o, c, i, j] = sum_{n, a, b} dy[n, o, a, b] * xpad[n, c, a*s + i, b*s + j]`` is the same sum as
:func:`handgrad.nn.functional.conv.conv2d_backward`'s ``direct`` method, which runs it as a
convolution with an (N, Ho, Wo) "kernel": a shape PyTorch's CPU kernels handle 2-5x slower
than their own weight-gradient routine (benchmarks/RESULTS.md, "Residual networks"). The C file
writes it as a matrix product whose columns are read from x in place (its header says how);
here is only when it applies and the call.

It applies to float32, contiguous, CPU, one group, dilation 1, a 3x3 kernel, any stride and
padding up to 2 (every 3x3 convolution of the ``resnet`` and ``cnn`` models). Anywhere else, or
where it cannot be built (no C compiler, ``HANDGRAD_FAST=0``), :func:`conv3x3_weight_grad`
returns ``None`` and the readable convolution runs. Tests hold the two equal
(tests/nn/test_conv_fast.py).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from handgrad._build import Build, c_library

_SOURCE = Path(__file__).with_name("conv_wgrad.c")
_V = 16  # floats per vector in conv_wgrad.c: dyT rows and workspace parts start at multiples


def _load() -> ctypes.CDLL:
    lib = c_library(_SOURCE, ["-O3", "-fopenmp"])
    fn = lib.handgrad_conv3x3_wgrad
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 9 + [ctypes.c_int]
    fn.restype = None
    return lib


#: The compiled library, built on first use (``build.get()``; ``None`` where it cannot be).
build = Build(_SOURCE, _load)

# The workspace (x on a padded grid, dy transposed, a partial dW per thread) is kept between
# calls, because fresh memory of that size costs page faults on every first touch (a lock: a
# server may train in threads).
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
        and all(s >= 1 for s in stride)
        and dilation == (1, 1)
        and groups == 1
        and all(0 <= p <= 2 for p in padding)
        and dout.shape[2] == (x.shape[2] + 2 * padding[0] - 3) // stride[0] + 1
        and dout.shape[3] == (x.shape[3] + 2 * padding[1] - 3) // stride[1] + 1
        and dout.shape[2] > 0
        and dout.shape[3] > 0
    )


def _round(n: int) -> int:
    return -(-n // _V) * _V


def conv3x3_weight_grad(
    x: Tensor, dout: Tensor, padding: tuple[int, int], stride: tuple[int, int] = (1, 1)
) -> Tensor | None:
    """``dW`` (O, C, 3, 3) of a 3x3 convolution of ``x`` (N, C, H, W) with gradient ``dout``
    (N, O, Ho, Wo) at its output; ``None`` where the compiled code is unavailable. The caller
    checks :func:`applies` first."""
    lib = build.get()
    if lib is None:
        return None
    x, dout = x.contiguous(), dout.contiguous()
    n, c, h, w = x.shape
    o, ho, wo = dout.shape[1], dout.shape[2], dout.shape[3]
    (ph, pw), (sh, sw) = padding, stride
    threads = torch.get_num_threads()
    # floats of each workspace part, each starting on a 64-byte boundary (see conv_wgrad.c)
    grid = _round(c * n * (h + 2 * ph) * (w + 2 * pw))
    dyt = _round(n * ho * wo * _round(o))
    part = threads * c * 9 * _round(o)
    dw = torch.empty(o, c, 3, 3)
    with _lock:
        if _workspace[0].numel() < grid + dyt + part:
            _workspace[0] = torch.empty(grid + dyt + part)
        base = _workspace[0].data_ptr()
        if base % 64:  # torch's CPU allocator aligns to 64 bytes; the C code's loads need it
            return None
        lib.handgrad_conv3x3_wgrad(
            x.data_ptr(), dout.data_ptr(), dw.data_ptr(), base, base + 4 * grid,
            base + 4 * (grid + dyt), n, c, h, w, o, sh, sw, ph, pw, threads,
        )  # fmt: skip
    return dw
