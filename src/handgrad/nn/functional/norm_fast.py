"""Training-mode batch norm (and batch norm + ReLU) in compiled C (``norm_kernels.c``).

The same formulas as :func:`handgrad.nn.functional.norm.fused_batchnorm_forward` and its
backward, one channel at a time so that a channel's values stay in the L2 cache between the
passes over them (the C file's header says why that pays). :mod:`handgrad.nn.functional.norm`
calls these where they apply (float32, contiguous or channels-last, CPU, training) and the
library is built (channels-last tensors have kernels of their own, a row of C channels at a
time); elsewhere, or where it cannot be built (no C compiler, ``HANDGRAD_FAST=0``), they
return ``None`` and the ATen formulation runs. Tests hold the two equal
(tests/nn/test_norm_fast.py).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from handgrad._build import Build, c_library
from handgrad.nn.functional.layout import layout_of

_SOURCE = Path(__file__).with_name("norm_kernels.c")
_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno",
          # let the float sums of a plane vectorise (their order is not the readable one's
          # anyway; the tests hold the two equal to float32 rounding)
          "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]  # fmt: skip


def _load() -> ctypes.CDLL:
    lib = c_library(_SOURCE, _FLAGS)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.handgrad_bn_forward.argtypes = [p] * 7 + [i64] * 3 + [ctypes.c_double] + [ctypes.c_int] * 2
    lib.handgrad_bn_forward.restype = None
    lib.handgrad_bn_backward.argtypes = [p] * 9 + [i64] * 3 + [ctypes.c_int]
    lib.handgrad_bn_backward.restype = None
    lib.handgrad_bn_forward_nhwc.argtypes = (
        [p] * 7 + [i64] * 2 + [ctypes.c_double] + [ctypes.c_int] * 2
    )
    lib.handgrad_bn_forward_nhwc.restype = ctypes.c_int
    lib.handgrad_bn_backward_nhwc.argtypes = [p] * 9 + [i64] * 2 + [ctypes.c_int]
    lib.handgrad_bn_backward_nhwc.restype = ctypes.c_int
    return lib


#: The compiled library, built on first use (``build.get()``; ``None`` where it cannot be).
build = Build(_SOURCE, _load)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def applies(x: Tensor, *params: Tensor | None) -> bool:
    """float32, on the CPU, with spatial axes (N, C, ...), contiguous or channels-last (the
    caller checks that every tensor of a call has the same :func:`~handgrad.nn.functional.
    layout.layout_of`), parameters contiguous. (Without spatial axes, (N, C), the ATen loops
    suit better.)"""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 3
        and layout_of(x) is not None
        and x.numel() > 0
        and all(
            p is None or (p.dtype == torch.float32 and p.is_contiguous() and p.device.type == "cpu")
            for p in params
        )
    )


def forward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    relu: bool,
    residual: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(y, mean, var)`` of training-mode batch norm (then a ReLU if ``relu``; with a
    ``residual``, ``y = max(bn(x) + residual, 0)``), the statistics (C,) in float64 with the
    biased variance; ``None`` where the C code is unavailable. The caller checks :func:`applies`
    first (``residual`` too, and that it has ``x``'s shape)."""
    lib = build.get()
    if lib is None:
        return None
    n, c = x.shape[0], x.shape[1]
    out = torch.empty_like(x)  # in x's layout
    mean = torch.empty(c, dtype=torch.float64)
    var = torch.empty(c, dtype=torch.float64)
    if layout_of(*(t for t in (x, residual) if t is not None)) == "nhwc":
        failed = lib.handgrad_bn_forward_nhwc(
            x.data_ptr(), _ptr(gamma), _ptr(beta), _ptr(residual), out.data_ptr(),
            mean.data_ptr(), var.data_ptr(), x.numel() // c, c, eps, int(relu),
            torch.get_num_threads(),
        )  # fmt: skip
        return None if failed else (out, mean, var)
    lib.handgrad_bn_forward(
        x.data_ptr(), _ptr(gamma), _ptr(beta), _ptr(residual), out.data_ptr(), mean.data_ptr(),
        var.data_ptr(),
        n, c, x.numel() // (n * c), eps, int(relu), torch.get_num_threads(),
    )  # fmt: skip
    return out, mean, var


def backward(
    dout: Tensor,
    out: Tensor | None,
    x: Tensor,
    gamma: Tensor | None,
    mean: Tensor,
    inv_std: Tensor,
    need_dx: bool,
    need_dresidual: bool = False,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None] | None:
    """``(dx, dgamma, dbeta, dresidual)`` for the gradient ``dout`` at the output; ``out`` is
    the ReLU's output (``None`` without a ReLU); ``mean``/``inv_std`` hold C values each;
    ``dresidual`` (``dout`` masked by the ReLU) only with ``need_dresidual``, which needs
    ``out``. ``None`` where the C code is unavailable. The caller checks :func:`applies`
    (``dout`` and ``out`` too)."""
    lib = build.get()
    if lib is None:
        return None
    n, c = x.shape[0], x.shape[1]
    mean64 = mean.reshape(-1).to(torch.float64).contiguous()
    inv_std64 = inv_std.reshape(-1).to(torch.float64).contiguous()
    dx = torch.empty_like(x) if need_dx else None
    dres = torch.empty_like(x) if need_dresidual else None
    sums = torch.empty(c, 2, dtype=torch.float64)  # (dbeta, dgamma) per channel
    if layout_of(*(t for t in (x, dout, out) if t is not None)) == "nhwc":
        failed = lib.handgrad_bn_backward_nhwc(
            dout.data_ptr(), _ptr(out), x.data_ptr(), _ptr(gamma), mean64.data_ptr(),
            inv_std64.data_ptr(), _ptr(dx), _ptr(dres), sums.data_ptr(), x.numel() // c, c,
            torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            return None
    else:
        lib.handgrad_bn_backward(
            dout.data_ptr(), _ptr(out), x.data_ptr(), _ptr(gamma), mean64.data_ptr(),
            inv_std64.data_ptr(), _ptr(dx), _ptr(dres), sums.data_ptr(), n, c,
            x.numel() // (n * c), torch.get_num_threads(),
        )  # fmt: skip
    sums = sums.to(torch.float32)
    return dx, sums[:, 1].contiguous(), sums[:, 0].contiguous(), dres
