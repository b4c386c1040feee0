"""Compiled gradients of 3x3 convolutions (``conv3x3.c``): the weight gradient at any stride,
and the input gradient at stride 2.

``dW[o, c, i, j] = sum_{n, a, b} dy[n, o, a, b] * xpad[n, c, a*s + i, b*s + j]`` is the same sum as
:func:`handgrad.nn.functional.conv.conv2d_backward`'s ``direct`` method, which runs it as a
convolution with an (N, Ho, Wo) "kernel": a shape PyTorch's CPU kernels handle 2-5x slower
than their own weight-gradient routine (benchmarks/RESULTS.md, "Residual networks"). The C file
writes it as a matrix product whose columns are read from x in place (its header says how);
here is only when it applies and the call.

The input gradient of a stride-2, padding-1 convolution (:func:`conv3x3_input_grad_s2`) is the
transposed convolution of ``dy``, which PyTorch's CPU kernels (oneDNN) run slowly when ``dx``
has few channels: at 16, twice the time of the forward convolution of the same size. The C file
splits it into the four phases (even or odd row and column) of ``dx``, each a small stride-1
correlation of ``dy``.

It applies to float32, CPU, one group, dilation 1, a 3x3 kernel, any stride and padding up to
2 (every 3x3 convolution of the ``resnet`` and ``cnn`` models), on NCHW or channels-last
tensors (read in place). Anywhere else, or where it cannot be built (no C compiler,
``HANDGRAD_FAST=0``), :func:`conv3x3_weight_grad` returns ``None`` and the readable
convolution runs (the input gradient: float32, NCHW, CPU, one group, 3x3, stride 2, padding 1,
at most :data:`INPUT_GRAD_MAX_CHANNELS` input channels).
Tests hold the two equal (tests/nn/test_conv_fast.py).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from handgrad._build import Build, c_library
from handgrad.nn.functional.layout import layout_of

_SOURCE = Path(__file__).with_name("conv3x3.c")


def _load() -> ctypes.CDLL:
    lib = c_library(_SOURCE, ["-O3", "-fopenmp"])
    lib.handgrad_conv3x3_wgrad_space.argtypes = [ctypes.c_int64] * 9 + [ctypes.c_int]
    lib.handgrad_conv3x3_wgrad_space.restype = ctypes.c_int64
    fn = lib.handgrad_conv3x3_wgrad
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 9 + [ctypes.c_int] * 2
    fn.restype = None
    lib.handgrad_conv3x3_dgrad_s2_space.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_int]
    lib.handgrad_conv3x3_dgrad_s2_space.restype = ctypes.c_int64
    fn = lib.handgrad_conv3x3_dgrad_s2
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    fn.restype = None
    return lib


#: The compiled library, built on first use (``build.get()``; ``None`` where it cannot be).
build = Build(_SOURCE, _load)

# The workspace (x on a padded grid, dy transposed, a partial dW per thread) is kept between
# calls, because fresh memory of that size costs page faults on every first touch (a lock: a
# server may train in threads).
_workspace: list[Tensor] = [torch.empty(0)]
_lock = threading.Lock()


def _cpu_float32(*tensors: Tensor) -> bool:
    """The C code reads float32 from CPU memory."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def applies(x: Tensor, dout: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> bool:  # fmt: skip
    """Whether :func:`conv3x3_weight_grad` computes this weight gradient (see the module doc)."""
    return (
        _cpu_float32(x, dout)
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


def conv3x3_weight_grad(
    x: Tensor, dout: Tensor, padding: tuple[int, int], stride: tuple[int, int] = (1, 1)
) -> Tensor | None:
    """``dW`` (O, C, 3, 3) of a 3x3 convolution of ``x`` (N, C, H, W) with gradient ``dout``
    (N, O, Ho, Wo) at its output; ``None`` where the compiled code is unavailable. The caller
    checks :func:`applies` first."""
    lib = build.get()
    if lib is None:
        return None
    nhwc = layout_of(x, dout) == "nhwc"  # channels-last: read as it is
    if not nhwc:
        x, dout = x.contiguous(), dout.contiguous()
    n, c, h, w = x.shape
    o = dout.shape[1]
    (ph, pw), (sh, sw) = padding, stride
    threads = torch.get_num_threads()
    dw = torch.empty(o, c, 3, 3)
    with _lock:
        space = lib.handgrad_conv3x3_wgrad_space(n, c, h, w, o, sh, sw, ph, pw, threads)
        if _workspace[0].numel() < space:
            _workspace[0] = torch.empty(space)
        base = _workspace[0].data_ptr()
        if base % 64:  # torch's CPU allocator aligns to 64 bytes; the C code's loads need it
            return None
        lib.handgrad_conv3x3_wgrad(
            x.data_ptr(), dout.data_ptr(), dw.data_ptr(), base, n, c, h, w, o, sh, sw, ph, pw,
            int(nhwc), threads,
        )  # fmt: skip
    return dw


#: The stride-2 input gradient is taken where dx has at most this many channels: there it
#: measured 1.1-3x faster than PyTorch's transposed convolution; with 64 or more, oneDNN's own
#: kernel was as fast or faster (0.7-0.94x; benchmarks/RESULTS.md, "Residual networks").
INPUT_GRAD_MAX_CHANNELS = 32


def applies_input_grad_s2(
    dout: Tensor, weight: Tensor, input_size: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> bool:  # fmt: skip
    """Whether :func:`conv3x3_input_grad_s2` computes this input gradient (see the module doc)."""
    h, w = input_size
    return (
        _cpu_float32(dout, weight)
        and dout.dim() == 4
        and weight.shape[2:] == (3, 3)
        and stride == (2, 2)
        and padding == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and h > 0
        and w > 0
        and layout_of(dout) != "nhwc"  # oneDNN's own is as fast on channels-last tensors
        and dout.shape[1] == weight.shape[0]
        and dout.shape[2:] == ((h + 1) // 2, (w + 1) // 2)
        and weight.shape[1] <= INPUT_GRAD_MAX_CHANNELS
    )


def conv3x3_input_grad_s2(
    dout: Tensor, weight: Tensor, input_size: tuple[int, int]
) -> Tensor | None:
    """``dx`` (N, C, H, W) of a 3x3 convolution with stride 2 and padding 1 and weights
    ``weight`` (O, C, 3, 3), from ``dout`` (N, O, ceil(H/2), ceil(W/2)); ``None`` where the
    compiled code is unavailable. The caller checks :func:`applies_input_grad_s2` first."""
    lib = build.get()
    if lib is None:
        return None
    dout, weight = dout.contiguous(), weight.contiguous()
    n, o = dout.shape[0], dout.shape[1]
    c, (h, w) = weight.shape[1], input_size
    threads = torch.get_num_threads()
    dx = torch.empty(n, c, h, w)
    with _lock:
        space = lib.handgrad_conv3x3_dgrad_s2_space(n, c, h, w, o, threads)
        if _workspace[0].numel() < space:
            _workspace[0] = torch.empty(space)
        lib.handgrad_conv3x3_dgrad_s2(
            dout.data_ptr(), weight.data_ptr(), dx.data_ptr(), _workspace[0].data_ptr(),
            n, c, h, w, o, threads,
        )  # fmt: skip
    return dx
