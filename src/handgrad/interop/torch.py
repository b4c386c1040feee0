"""The bridge to PyTorch: handgrad layers inside ``torch.nn`` models, and weights both ways.

Two different things, both needed by a user who mixes the two libraries:

1. **A handgrad module inside a PyTorch model, hand-written backward kept.**
   ``as_function(module)`` returns a :class:`TorchModule` (a ``torch.nn.Module``) whose forward
   runs the handgrad module through :class:`HandgradFunction` (a ``torch.autograd.Function``).
   PyTorch's autograd then calls the module's own ``backward`` for the input gradient and
   receives the parameter gradients from it too, so ``loss.backward()`` fills ``.grad`` of the
   wrapper's ``nn.Parameter`` s and any ``torch.optim`` optimizer trains them::

       layer = as_function(handgrad.Linear(784, 50))       # an nn.Module
       net = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(50, 10))
       loss = torch.nn.functional.cross_entropy(net(x), y)
       loss.backward()                                     # Linear's hand-written bwd runs

2. **Weights converted between equivalent architectures** (``to_torch`` / ``from_torch``):
   a handgrad ``Sequential`` (of ``Linear``, ``Conv2d``, ``BatchNorm1d/2d``, ``LayerNorm``,
   pooling, ``Dropout``, ``Flatten``/``Reshape`` and the activations PyTorch also has) becomes
   an ``nn.Sequential`` of the matching ``torch.nn`` layers with the same function, weights and
   running statistics, and back; the built-in ``mlp``, ``cnn`` and ``resnet`` models convert
   whole (a ``ResBlock`` becomes a :class:`TorchResBlock` of converted sub-layers).
   Linear's weight is stored (in, out) here, the lesson's layout, and (out, in) in PyTorch: it
   is transposed on the way. The mapping is a table, :data:`CONVERSIONS`; a new layer pair is
   one ``register(...)`` call, and the tests check every pair on the ``handgrad check`` cases.

How the autograd Function follows PyTorch's "Extending autograd" rules (each autograd node
back-propagates against its own forward call; parameters are explicit inputs; saved tensors
guard against in-place changes; no double backward) is written down in ``docs/design.md``.

The name: a submodule called ``torch`` inside ``handgrad.interop`` is harmless because every
import in handgrad is absolute (``import torch`` always means PyTorch); the one rule it brings
is that ``handgrad/interop/__init__.py`` must not bind the name ``torch`` itself (importing the
submodule would replace it), and no script should be run from inside ``src/handgrad/interop/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from handgrad.interop.function import HandgradFunction, TorchModule, as_function, functional_call
from handgrad.nn.layers import (
    GELU,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNormAddReLU2d,
    BatchNormReLU2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Mish,
    ReLU,
    ResBlock,
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from handgrad.nn.module import Module, Sequential

__all__ = [
    "CONVERSIONS",
    "Conversion",
    "HandgradFunction",
    "TorchBatchNormAddReLU2d",
    "TorchGlobalAvgPool",
    "TorchModule",
    "TorchResBlock",
    "as_function",
    "from_torch",
    "functional_call",
    "register",
    "to_torch",
]

# --------------------------------------------------------------------------------------------
# 2. Converting weights between equivalent architectures
# --------------------------------------------------------------------------------------------

Transform = Callable[[Tensor], Tensor]


def same(t: Tensor) -> Tensor:
    return t


def transpose(t: Tensor) -> Tensor:
    return t.t()


@dataclass(frozen=True)
class Conversion:
    """One layer pair: how to build each side from the other and how tensors map.

    ``tensors`` maps a handgrad parameter/buffer name to ``(torch name, transform)``; the
    transform turns the handgrad tensor into PyTorch's layout and must be its own inverse
    (identity or a 2-D transpose), so the same table serves both directions. A name whose
    tensor is ``None`` on both sides (a layer built without bias) is skipped.
    """

    handgrad: type[Module]
    torch: type[nn.Module]
    build_torch: Callable[[Any], nn.Module]
    build_handgrad: Callable[[Any], Module]
    tensors: dict[str, tuple[str, Transform]]


CONVERSIONS: list[Conversion] = []


def register(
    handgrad: type[Module],
    torch_type: type[nn.Module],
    build_torch: Callable[[Any], nn.Module],
    build_handgrad: Callable[[Any], Module],
    tensors: dict[str, tuple[str, Transform]] | None = None,
) -> None:
    """Add a layer pair to :data:`CONVERSIONS` (later registrations of a type win)."""
    CONVERSIONS.insert(
        0, Conversion(handgrad, torch_type, build_torch, build_handgrad, tensors or {})
    )


def _has_bias(m: Any) -> bool:
    return m.bias is not None


class TorchGlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C), the mean over positions: PyTorch has no single module for
    handgrad's ``GlobalAvgPool`` (``AdaptiveAvgPool2d(1)`` keeps the two size-1 axes)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class TorchBatchNormReLU2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` then a ReLU, with ``nn.BatchNorm2d``'s parameters and state-dict
    names: the twin of handgrad's fused ``BatchNormReLU2d`` (PyTorch has no such module)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


class TorchBatchNormAddReLU2d(nn.BatchNorm2d):
    """``relu(nn.BatchNorm2d(x) + residual)`` with ``nn.BatchNorm2d``'s parameters and
    state-dict names: the twin of handgrad's ``BatchNormAddReLU2d``."""

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:  # type: ignore[override]
        return torch.relu(super().forward(x) + residual)


class TorchResBlock(nn.Module):
    """The twin of handgrad's ``ResBlock``: ``relu(bn2(conv2(bn1(conv1(x)))) + skip(x))``
    with ``skip`` the identity or ``skip_bn(skip_conv(x))``; the same sub-layer names, so the
    same state-dict names. ``bn2`` is a :class:`TorchBatchNormAddReLU2d` (the add and the ReLU
    inside it), or a plain ``nn.BatchNorm2d``. PyTorch's autograd sums the two paths'
    gradients of ``x``."""

    def __init__(
        self,
        conv1: nn.Module,
        bn1: nn.Module,
        conv2: nn.Module,
        bn2: nn.Module,
        skip_conv: nn.Module | None = None,
        skip_bn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.skip_conv, self.skip_bn = skip_conv, skip_bn

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.bn1(self.conv1(x)))
        skip = x if self.skip_conv is None else self.skip_bn(self.skip_conv(x))  # type: ignore[misc]
        if isinstance(self.bn2, TorchBatchNormAddReLU2d):
            return self.bn2(h, skip)
        return torch.relu(self.bn2(h) + skip)


def _resblock_to_torch(m: ResBlock) -> TorchResBlock:
    parts = [m.conv1, m.bn1, m.conv2, m.bn2, m.skip_conv, m.skip_bn]
    return TorchResBlock(*(None if p is None else to_torch(p) for p in parts))


def _resblock_from_torch(t: TorchResBlock) -> ResBlock:
    conv1 = from_torch(t.conv1)
    _only_if(isinstance(conv1, Conv2d), f"{t} (conv1 must be an nn.Conv2d)")
    c, o, stride = conv1.in_channels, conv1.out_channels, conv1.geometry.stride[0]  # type: ignore[attr-defined]
    out = ResBlock(c, o, stride)
    _only_if((out.skip_conv is None) == (t.skip_conv is None), f"{t} (skip path)")
    out.conv1, out.bn1, out.conv2 = conv1, from_torch(t.bn1), from_torch(t.conv2)  # type: ignore[assignment]
    bn2 = from_torch(t.bn2)
    _only_if(isinstance(bn2, BatchNorm2d | BatchNormAddReLU2d), f"{t} (bn2 must be a batch norm)")
    if not isinstance(bn2, BatchNormAddReLU2d):  # a plain nn.BatchNorm2d: the same state
        out.bn2 = BatchNormAddReLU2d(*_bn_args(bn2))
        out.bn2.load_state_dict(bn2.state_dict())
    else:
        out.bn2 = bn2
    if t.skip_conv is not None:
        out.skip_conv, out.skip_bn = from_torch(t.skip_conv), from_torch(t.skip_bn)  # type: ignore[assignment,arg-type]
    return out


def _only_if(ok: bool, what: str) -> None:
    if not ok:
        raise TypeError(f"no handgrad equivalent for {what}")


def _conv_to_torch(m: Conv2d) -> nn.Conv2d:
    """``nn.Conv2d`` with the same geometry; a channels-last layer's weight is moved to
    channels-last memory, where PyTorch then computes the convolution too."""
    g = m.geometry
    out = nn.Conv2d(m.in_channels, m.out_channels, g.kernel, g.stride, g.padding, g.dilation,
                    g.groups, bias=_has_bias(m))  # fmt: skip
    return out.to(memory_format=torch.channels_last) if m.channels_last else out


def _conv_from_torch(t: nn.Conv2d) -> Conv2d:
    _only_if(isinstance(t.padding, tuple) and t.padding_mode == "zeros", f"{t} (padding)")
    w = t.weight
    # a weight moved by .to(memory_format=torch.channels_last) has its strides, which differ
    # from the contiguous ones even where both layouts are the same memory (one channel)
    channels_last = (
        w.stride() == torch.empty(w.shape, memory_format=torch.channels_last).stride()
        and w.stride() != torch.empty(w.shape).stride()
    )
    return Conv2d(t.in_channels, t.out_channels, t.kernel_size, t.stride, t.padding,  # type: ignore[arg-type]
                  t.dilation, t.groups, bias=_has_bias(t), channels_last=channels_last)  # fmt: skip


def _unflatten_to_reshape(t: nn.Unflatten) -> Reshape:
    _only_if(t.dim == 1, f"{t} (only dim=1: the batch axis stays first)")
    return Reshape(*t.unflattened_size)  # type: ignore[arg-type]


def _flatten_from_torch(t: nn.Flatten) -> Flatten:
    _only_if(t.start_dim == 1 and t.end_dim == -1, f"{t} (only start_dim=1, end_dim=-1)")
    return Flatten()


def _pool_args(m: Any) -> dict[str, Any]:
    g = m.geometry
    return {"kernel_size": g.kernel, "stride": g.stride, "padding": g.padding}


def _bn_args(m: Any) -> tuple[Any, ...]:
    """BatchNorm's constructor arguments, the same names and order on both sides."""
    return m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats


W_B = {"weight": ("weight", same), "bias": ("bias", same)}
BN = W_B | {n: (n, same) for n in ("running_mean", "running_var", "num_batches_tracked")}

# One line per layer pair. Sequential is handled by ``to_torch``/``from_torch`` themselves.
# fmt: off
register(Linear, nn.Linear,
         lambda m: nn.Linear(m.in_features, m.out_features, bias=_has_bias(m)),
         lambda t: Linear(t.in_features, t.out_features, bias=_has_bias(t)),
         {"weight": ("weight", transpose), "bias": ("bias", same)})
register(Conv2d, nn.Conv2d, _conv_to_torch, _conv_from_torch, W_B)
register(BatchNorm1d, nn.BatchNorm1d, lambda m: nn.BatchNorm1d(*_bn_args(m)),
         lambda t: BatchNorm1d(*_bn_args(t)), BN)
register(BatchNorm2d, nn.BatchNorm2d, lambda m: nn.BatchNorm2d(*_bn_args(m)),
         lambda t: BatchNorm2d(*_bn_args(t)), BN)
register(BatchNormReLU2d, TorchBatchNormReLU2d, lambda m: TorchBatchNormReLU2d(*_bn_args(m)),
         lambda t: BatchNormReLU2d(*_bn_args(t)), BN)
register(BatchNormAddReLU2d, TorchBatchNormAddReLU2d,
         lambda m: TorchBatchNormAddReLU2d(*_bn_args(m)),
         lambda t: BatchNormAddReLU2d(*_bn_args(t)), BN)
register(LayerNorm, nn.LayerNorm,
         lambda m: nn.LayerNorm(m.normalized_shape, m.eps, m.weight is not None, bias=_has_bias(m)),
         lambda t: LayerNorm(t.normalized_shape, t.eps, t.elementwise_affine, bias=_has_bias(t)),
         W_B)
register(MaxPool2d, nn.MaxPool2d,
         lambda m: nn.MaxPool2d(**_pool_args(m), dilation=m.geometry.dilation),
         lambda t: MaxPool2d(t.kernel_size, t.stride, t.padding, t.dilation))
register(AvgPool2d, nn.AvgPool2d, lambda m: nn.AvgPool2d(**_pool_args(m)),
         lambda t: AvgPool2d(t.kernel_size, t.stride, t.padding))
register(GlobalAvgPool, TorchGlobalAvgPool, lambda m: TorchGlobalAvgPool(),
         lambda t: GlobalAvgPool())
register(Flatten, nn.Flatten, lambda m: nn.Flatten(), _flatten_from_torch)
register(Reshape, nn.Unflatten, lambda m: nn.Unflatten(1, m.shape), _unflatten_to_reshape)
register(Identity, nn.Identity, lambda m: nn.Identity(), lambda t: Identity())
register(Dropout, nn.Dropout, lambda m: nn.Dropout(m.p), lambda t: Dropout(t.p))
register(ReLU, nn.ReLU, lambda m: nn.ReLU(), lambda t: ReLU())
register(LeakyReLU, nn.LeakyReLU, lambda m: nn.LeakyReLU(m.negative_slope),
         lambda t: LeakyReLU(t.negative_slope))
register(Tanh, nn.Tanh, lambda m: nn.Tanh(), lambda t: Tanh())
register(Sigmoid, nn.Sigmoid, lambda m: nn.Sigmoid(), lambda t: Sigmoid())
register(SiLU, nn.SiLU, lambda m: nn.SiLU(), lambda t: SiLU())
register(Mish, nn.Mish, lambda m: nn.Mish(), lambda t: Mish())
register(GELU, nn.GELU, lambda m: nn.GELU(m.approximate), lambda t: GELU(t.approximate))
register(Softmax, nn.Softmax, lambda m: nn.Softmax(m.dim), lambda t: Softmax(t.dim))
# composite: the sub-layers are converted (weights copied) by the builders themselves
register(ResBlock, TorchResBlock, _resblock_to_torch, _resblock_from_torch)
# fmt: on


def _find(kind: str, obj: object) -> Conversion:
    for c in CONVERSIONS:
        if type(obj) is (c.handgrad if kind == "handgrad" else c.torch):
            return c
    known = sorted(
        {(c.handgrad if kind == "handgrad" else c.torch).__name__ for c in CONVERSIONS}
        | {"Sequential"}
    )
    raise TypeError(
        f"no conversion for {kind} layer {type(obj).__name__}; known: {', '.join(known)} "
        "(add one with handgrad.interop.torch.register)"
    )


def _copy(src: Tensor | None, dst: Tensor | None, fn: Transform, where: str) -> None:
    if src is None and dst is None:
        return
    if src is None or dst is None:
        raise ValueError(f"{where}: present on one side only")
    value = fn(src.detach())
    if value.shape != dst.shape:
        raise ValueError(f"{where}: shape {tuple(value.shape)} does not fit {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(value)


def to_torch(model: Module) -> nn.Module:
    """A ``torch.nn`` model computing the same function as the handgrad ``model``, with its
    weights copied (not shared), on the same device and dtype. ``Sequential`` is converted
    recursively; every other layer needs a row in :data:`CONVERSIONS`."""
    if type(model) is Sequential:
        return nn.Sequential(*(to_torch(layer) for layer in model.layers))
    c = _find("handgrad", model)
    out = c.build_torch(model)
    ref = next(iter(model.state_dict().values()), None)
    if ref is not None:
        out = out.to(device=ref.device, dtype=ref.dtype)
    for hg_name, (t_name, fn) in c.tensors.items():
        where = f"{type(model).__name__}.{hg_name} -> {c.torch.__name__}.{t_name}"
        _copy(getattr(model, hg_name), getattr(out, t_name), fn, where)
    return out


def from_torch(model: nn.Module) -> Module:
    """The handgrad model equivalent to a ``torch.nn`` one (weights copied), the inverse of
    :func:`to_torch`. ``nn.Sequential`` is converted recursively."""
    if type(model) is nn.Sequential:
        return Sequential(*(from_torch(layer) for layer in model))
    c = _find("torch", model)
    out = c.build_handgrad(model)
    ref = next(iter(model.state_dict().values()), None)
    if ref is not None:
        out.to(device=ref.device, dtype=ref.dtype)
    for hg_name, (t_name, fn) in c.tensors.items():
        where = f"{c.torch.__name__}.{t_name} -> {type(out).__name__}.{hg_name}"
        _copy(getattr(model, t_name), getattr(out, hg_name), fn, where)
    return out
