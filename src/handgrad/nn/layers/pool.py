"""Pooling layers: ``MaxPool2d``, ``AvgPool2d`` and ``GlobalAvgPool``."""

from __future__ import annotations

from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.functional.conv import ConvGeometry
from handgrad.nn.layers.conv import pair
from handgrad.nn.module import Module


class _Pool2d(Module):
    """Shared window arguments and shape checks; ``stride`` defaults to the kernel size."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        kernel = pair(kernel_size, "kernel_size", minimum=1)
        pad = pair(padding, "padding", minimum=0)
        if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
            raise ValueError(
                f"{type(self).__name__}: padding {pad} must be at most half the kernel {kernel}"
            )
        self.geometry = ConvGeometry(
            kernel,
            pair(stride if stride is not None else kernel, "stride", minimum=1),
            pad,
            pair(dilation, "dilation", minimum=1),
        )

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self._label()}: expected input (N, C, H, W), got {tuple(x.shape)}")
        ho, wo = self.geometry.output_size(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self._label()}: input {tuple(x.shape)} is smaller than a window")

    def extra_repr(self) -> str:
        g = self.geometry
        text = f"kernel_size={g.kernel}, stride={g.stride}"
        if g.padding != (0, 0):
            text += f", padding={g.padding}"
        if g.dilation != (1, 1):
            text += f", dilation={g.dilation}"
        return text


class MaxPool2d(_Pool2d):
    """The maximum of each window: ``y[n, c, a, b] = max_{i, j} xpad[n, c, a*s + i*d, b*s + j*d]``
    (padding is ``-inf``). ``dx`` routes each ``dy`` to the pixel that won its window; the
    winners' flat indices (``u*W + v``, int64) are cached from the forward pass.

    Shape: (N, C, H, W) -> (N, C, Ho, Wo), sizes as for :class:`Conv2d`.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        out, indices = F.maxpool2d_forward(x, self.geometry)
        self.save_for_backward(indices)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (indices,) = self.saved
        x.g = F.maxpool2d_backward(out.g, indices, x.shape)


class AvgPool2d(_Pool2d):
    """The mean of each window; zero padding counts in the mean (PyTorch's default
    ``count_include_pad=True``). ``dx``: each pixel gets ``dy / (kh*kw)`` from every window
    it belongs to.

    Shape: (N, C, H, W) -> (N, C, Ho, Wo).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__(kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return F.avgpool2d_forward(x, self.geometry)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.avgpool2d_backward(out.g, x.shape, self.geometry)


class GlobalAvgPool(Module):
    """The mean over all positions of each channel: (N, C, H, W) -> (N, C), ready for a
    ``Linear`` head (the pooling and the flattening in one step).
    ``dx[n, c, u, v] = dy[n, c] / (H*W)``."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool: expected input (N, C, H, W), got {tuple(x.shape)}")
        return F.global_avgpool_forward(x)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = F.global_avgpool_backward(out.g, x.shape)
