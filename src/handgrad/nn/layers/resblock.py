"""``ResBlock``: the residual block, the canonical layer whose input is used twice."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.nn.functional.conv import Method, add_pointwise_input_grad
from handgrad.nn.layers.conv import Conv2d
from handgrad.nn.layers.norm import BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d
from handgrad.nn.module import Module


class ResBlock(Module):
    """``y = relu(F(x) + S(x))``, a residual block (He et al. 2015, "basic block"):

    - the main path ``F(x) = bn2(conv2(relu(bn1(conv1(x)))))``: two 3x3 convolutions without
      bias, the first with ``stride`` (downsampling), each followed by a batch norm (the first
      fused with its ReLU, :class:`~handgrad.nn.layers.BatchNormReLU2d`; the second with the
      sum and the last ReLU, :class:`~handgrad.nn.layers.BatchNormAddReLU2d`, which takes the
      skip path as its second input);
    - the skip path ``S(x)``: ``x`` itself when the shape is kept (``in_channels ==
      out_channels`` and ``stride == 1``), else ``bn(conv1x1(x, stride))``, the projection
      that makes the two paths add up.

    Backward: ``x`` feeds both paths, so by the chain rule its gradient is the sum of the two
    paths' gradients. With ``g = dL/d(F + S) = dy * 1[y > 0]`` (through the last ReLU), and
    ``d(F + S)/dF = d(F + S)/dS = 1``, both paths receive the same ``g``::

        dx = dF/dx^T g  +  dS/dx^T g        (dS/dx^T g = g for the identity skip)

    Each sub-layer's backward is its own hand-written one; ``bn2``'s returns the gradients of
    both its inputs (``g`` for the skip path), and this class routes them and adds the two
    contributions to ``dx``, explicitly.

    Init: the convolutions are Kaiming-initialised (they feed ReLUs; the 1x1 projection too,
    for the same variance on both paths). With ``zero_init=True`` the second batch norm's
    ``gamma`` starts at 0, so that every block starts as its skip path and a deep net starts
    as a shallow one (Goyal et al. 2017, "zero-init residual"); the default ``False`` keeps
    PyTorch's ones.

    Args:
        in_channels, out_channels: ``C`` and ``O``.
        stride: of the first convolution and of the projection (2 halves the resolution).
        method: the convolutions' method (see :class:`~handgrad.nn.layers.Conv2d`).
        channels_last: the convolutions compute in channels-last memory (see
            :class:`~handgrad.nn.layers.Conv2d`); the batch norms keep their input's layout.
        zero_init: start the second batch norm's ``gamma`` at 0.
        generator: for the weight initialisation.

    Shape:
        (N, C, H, W) -> (N, O, Ho, Wo), ``Ho = floor((H - 1) / stride) + 1``.

    Example:
        >>> block = ResBlock(16, 32, stride=2)
        >>> block(torch.randn(8, 16, 28, 28)).shape
        torch.Size([8, 32, 14, 14])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        method: Method = "auto",
        channels_last: bool = False,
        zero_init: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if in_channels < 1 or out_channels < 1 or stride < 1:
            raise ValueError(
                f"ResBlock needs positive channels and stride, got {in_channels}, "
                f"{out_channels}, stride={stride}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        conv = {"bias": False, "method": method, "channels_last": channels_last,
                "generator": generator}  # fmt: skip
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, **conv)  # type: ignore[arg-type]
        self.bn1 = BatchNormReLU2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, **conv)  # type: ignore[arg-type]
        self.bn2 = BatchNormAddReLU2d(out_channels)  # bn, + skip, ReLU
        if zero_init:
            with torch.no_grad():
                self.bn2.weight.zero_()
        self.skip_conv: Conv2d | None = None
        self.skip_bn: BatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            # A 1x1 convolution's columns are its strided input itself (no kh*kw copies), so
            # on NCHW tensors the matrix-product lowering beats the direct kernels at every
            # width measured (benchmarks/RESULTS.md, "Residual networks"); "auto" would pick
            # direct above 32 input channels. On channels-last tensors "auto" runs direct.
            lowered = method == "auto" and not channels_last
            skip = {**conv, "method": "im2col" if lowered else method}
            self.skip_conv = Conv2d(in_channels, out_channels, 1, stride, 0, **skip)  # type: ignore[arg-type]
            self.skip_bn = BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.bn1(self.conv1(x)))  # (N, O, Ho, Wo)
        skip = x if self.skip_conv is None else self.skip_bn(self.skip_conv(x))  # type: ignore[misc]
        return self.bn2(h, skip)  # relu(bn2(h) + skip), (N, O, Ho, Wo)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        need = self.needs_input_grad[0]
        # dh: through bn2 into the main path; g = dL/d(main + skip), what the skip path receives
        dh, g = self.bn2.backward(out.g)
        dx_main = self.conv1.backward(
            self.bn1.backward(self.conv2.backward(dh)), need_input_grad=need
        )
        if not need:
            if self.skip_conv is not None:
                self.skip_conv.backward(self.skip_bn.backward(g), need_input_grad=False)  # type: ignore[union-attr]
            return
        # x was used twice: the two contributions add up, into dx_main (a fresh buffer of
        # conv1's backward: no new activation-sized allocation)
        if self.skip_conv is None:
            x.g = dx_main.add_(g)  # the identity's Jacobian is 1
        elif self.skip_conv.geometry.pointwise:
            # the projection's dW by its layer, its dx added straight into dx_main's pixels
            ds = self.skip_bn.backward(g)  # type: ignore[union-attr]
            self.skip_conv.backward(ds, need_input_grad=False)
            x.g = add_pointwise_input_grad(dx_main, ds, self.skip_conv.weight,
                                           self.skip_conv.geometry.stride)  # fmt: skip
        else:
            ds = self.skip_bn.backward(g)  # type: ignore[union-attr]
            x.g = dx_main.add_(self.skip_conv.backward(ds, need_input_grad=True))

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}"
        return text + (f", stride={self.stride}" if self.stride != 1 else "")
