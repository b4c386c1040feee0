"""``Conv2d``: the 2-d convolution layer."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.functional.conv import METHODS, ConvGeometry, Method
from handgrad.nn.module import Module, Parameter
from handgrad.nn.weights import init_weight


def pair(value: int | tuple[int, int], name: str, *, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``; a tuple must have two ints; each at least ``minimum``."""
    out = (value, value) if isinstance(value, int) else tuple(value)
    if len(out) != 2 or not all(isinstance(v, int) and v >= minimum for v in out):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return out  # type: ignore[return-value]


class Conv2d(Module):
    """Applies ``y[n, o] = b[o] + sum_c W[o, c] (*) x[n, c]``, a 2-d cross-correlation over
    (N, C, H, W) inputs, with stride, zero padding, dilation and groups.

    The forward and the hand-written backward are in :mod:`handgrad.nn.functional.conv`: ``dx``
    is the transposed convolution of ``dy`` with ``W`` (the adjoint) and ``dW`` the correlation of
    ``x`` with ``dy``, computed either by lowering to matrix products (``im2col``: columns of
    patches, ``dW = dY @ cols^T``, ``dx = col2im(W^T @ dY)``) or with direct convolution kernels.

    Args:
        in_channels, out_channels: ``C`` and ``O``; both divisible by ``groups``.
        kernel_size, stride, padding, dilation: an int or an (rows, columns) pair.
        groups: split the channels into ``groups`` independent convolutions (``groups =
            in_channels`` is a depthwise convolution).
        bias: learn an additive bias per output channel (default ``True``; switch it off
            before a batch norm, whose ``beta`` does the same job).
        method: ``"auto"`` (default: ``im2col`` when a patch ``C/G * kh * kw`` has at most 32
            values, where it is measured faster, else ``direct``), ``"im2col"`` or ``"direct"``.
        keep_cols: ``im2col`` only: keep the columns from forward to backward (default, faster)
            or rebuild them in backward (``kh*kw`` times less memory per layer).
        channels_last: give channels-last (NHWC) outputs, and run the ``direct`` method (what
            "auto" picks then) on channels-last memory, the input converted where it is not
            already: the same values, faster on CPUs for few channels (default ``False``:
            PyTorch's NCHW).
        init, nonlinearity, generator: weight initialisation
            (:func:`handgrad.nn.weights.init_weight`), with ``fan_in = C/G * kh * kw``; Kaiming
            for a ReLU-family activation (default).

    Shape:
        input (N, C, H, W) -> output (N, O, Ho, Wo), ``Ho = floor((H + 2p - d (kh - 1) - 1) / s)
        + 1`` (the same for ``Wo``).

    Attributes:
        weight: (O, C/G, kh, kw), PyTorch's layout. bias: (O,), zeros.

    Example:
        >>> conv = Conv2d(1, 16, 3, padding=1)
        >>> conv(torch.randn(8, 1, 28, 28)).shape
        torch.Size([8, 16, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        method: Method = "auto",
        keep_cols: bool = True,
        channels_last: bool = False,
        init: str = "kaiming",
        nonlinearity: str = "relu",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_channels < 1 or out_channels < 1 or groups < 1:
            raise ValueError(
                f"Conv2d needs positive channels and groups, got {in_channels}, {out_channels}, "
                f"groups={groups}"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"both be divisible by groups ({groups})"
            )
        if method not in METHODS:
            raise ValueError(f"Conv2d: unknown method {method!r}; choose from {METHODS}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.geometry = ConvGeometry(
            pair(kernel_size, "kernel_size", minimum=1),
            pair(stride, "stride", minimum=1),
            pair(padding, "padding", minimum=0),
            pair(dilation, "dilation", minimum=1),
            groups,
        )
        self.method, self.keep_cols, self.channels_last = method, keep_cols, channels_last
        kh, kw = self.geometry.kernel
        w = init_weight(
            (out_channels, in_channels // groups, kh, kw),
            in_channels // groups * kh * kw,
            out_channels // groups * kh * kw,
            init,
            nonlinearity=nonlinearity,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        self.weight = Parameter(w)
        self.bias = (
            Parameter(torch.zeros(out_channels, device=device, dtype=w.dtype)) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._label()}: expected input (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}"
            )
        ho, wo = self.geometry.output_size(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"{self._label()}: input {tuple(x.shape)} is smaller than the (dilated) kernel "
                "plus padding; pad more or use a smaller kernel"
            )
        out, cache = F.conv2d_forward(
            x, self.weight, self.bias, self.geometry, method=self.method,
            keep_cols=self.keep_cols, channels_last=self.channels_last,
        )  # fmt: skip
        self.save_for_backward(cache)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (cache,) = self.saved
        dx, self.weight.g, db = F.conv2d_backward(out.g, cache, need_dx=self.needs_input_grad[0])
        if self.bias is not None:
            self.bias.g = db
        if dx is not None:
            x.g = dx

    def extra_repr(self) -> str:
        geo = self.geometry
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={geo.kernel}"
        for name, value, default in (
            ("stride", geo.stride, (1, 1)),
            ("padding", geo.padding, (0, 0)),
            ("dilation", geo.dilation, (1, 1)),
            ("groups", geo.groups, 1),
        ):
            if value != default:
                text += f", {name}={value}"
        if self.bias is None:
            text += ", bias=False"
        if self.method != "auto":
            text += f", method={self.method!r}"
        if self.channels_last:
            text += ", channels_last=True"
        return text
