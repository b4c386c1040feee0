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
   running statistics, and back; the built-in ``mlp`` and ``cnn`` models convert whole.
   Linear's weight is stored (in, out) here, the lesson's layout, and (out, in) in PyTorch: it
   is transposed on the way. The mapping is a table, :data:`CONVERSIONS`; a new layer pair is
   one ``register(...)`` call, and the tests check every pair on the ``handgrad check`` cases.

How the autograd Function works (the PyTorch "Extending autograd" rules):

- ``forward`` runs the handgrad module in the usual ``__call__`` on *detached* inputs (grad
  mode is off there anyway). A handgrad module keeps its backward context on a per-module stack
  (``Module`` design note 1); the bridge moves the entries pushed by this call off those stacks
  and into the autograd ``ctx``, and pushes them back just before calling ``module.backward``.
  Each autograd node therefore back-propagates against *its own* forward call, whatever order
  PyTorch's engine visits the nodes in, and ``retain_graph=True`` (a second backward) works.
  Under ``torch.no_grad()``, or when nothing requires a gradient, the context is dropped at
  once: inference does not pile up contexts.
- The parameters are explicit inputs of the Function, so autograd accumulates their gradients
  into the wrappers' ``.grad``. The handgrad module's own ``param.g`` is left as it was.
- The inputs, the output and the parameters are saved with ``ctx.save_for_backward``, so an
  in-place change to any of them between forward and backward is the usual PyTorch error
  instead of a silently wrong gradient.
- The backward is ``once_differentiable``: a hand-written backward has no graph of its own, so
  double backward (``create_graph=True``) raises instead of returning wrong second derivatives.
- A module in ``eval()`` keeps no context (``Module`` design note 5); its wrapped forward still
  works for inference, and a backward through it says to call ``train()``.

About the name ``handgrad.interop.torch``: that module only re-exports this one. A submodule called
``torch`` inside the package is harmless because every import in handgrad is absolute
(``import torch`` always means PyTorch); the one rule it brings is that
``handgrad/__init__.py`` must not bind the name ``torch`` itself (importing the submodule
would replace it), and no script should be run from inside ``src/handgrad/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from handgrad.nn.layers import (
    GELU,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
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
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from handgrad.nn.module import Module, Parameter, Sequential

__all__ = [
    "CONVERSIONS",
    "Conversion",
    "HandgradFunction",
    "TorchGlobalAvgPool",
    "TorchModule",
    "as_function",
    "from_torch",
    "functional_call",
    "register",
    "to_torch",
]

# --------------------------------------------------------------------------------------------
# 1. A handgrad module as a torch.autograd.Function
# --------------------------------------------------------------------------------------------

Pending = list[tuple[Module, list[Any]]]


def _unique_modules(module: Module) -> list[Module]:
    """Every sub-module once (a module used twice in the tree appears twice in ``modules()``)."""
    seen: dict[int, Module] = {}
    for m in module.modules():
        seen.setdefault(id(m), m)
    return list(seen.values())


def _pending_stack(m: Module) -> list[Any]:
    # The Module's per-call context stack (module.py, design note 1). The bridge is the one
    # place outside module.py that moves entries between that stack and autograd's ctx.
    return m.__dict__.setdefault("_pending", [])


def _take_contexts(modules: list[Module], marks: list[int]) -> Pending:
    """Remove and return the contexts pushed since ``marks`` (the stack heights before)."""
    taken: Pending = []
    for m, mark in zip(modules, marks, strict=True):
        stack = _pending_stack(m)
        if len(stack) > mark:
            taken.append((m, stack[mark:]))
            del stack[mark:]
    return taken


def _put_back(taken: Pending) -> None:
    for m, entries in taken:
        _pending_stack(m).extend(entries)


@contextmanager
def _bound(params: Sequence[Parameter], values: Sequence[Tensor]) -> Iterator[None]:
    """Make each handgrad parameter use the storage of the matching tensor for the duration.

    A parameter that already shares the tensor's storage, shape and dtype (the usual case for a
    :class:`TorchModule`) is left alone; others are pointed at ``value.detach()`` and restored
    afterwards, so :func:`functional_call` never changes the module it is given.
    """
    swapped: list[tuple[Parameter, Tensor]] = []
    try:
        for p, v in zip(params, values, strict=True):
            if not _same_storage(p, v):
                swapped.append((p, p.data))
                p.data = v.detach()
        yield
    finally:
        for p, old in swapped:
            p.data = old


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )


@dataclass
class _Call:
    """What one forward call hands to its backward (kept on the autograd ctx)."""

    module: Module
    params: list[Parameter]
    n_inputs: int
    contexts: Pending | None  # None: the module was in eval mode, nothing to go back through


class HandgradFunction(torch.autograd.Function):
    """``torch.autograd.Function`` running a handgrad module's forward and hand-written backward.

    ``HandgradFunction.apply(module, n_inputs, keep, *inputs, *params)``: ``params`` are tensors
    for ``module.parameters()`` in order (the module computes with them), ``keep`` says whether
    a backward may follow. Use :func:`functional_call` or :func:`as_function` rather than calling
    this directly.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, module: Module, n_inputs: int, keep: bool, *flat: Any
    ) -> Tensor:
        inputs = tuple(x.detach() if isinstance(x, Tensor) else x for x in flat[:n_inputs])
        values = flat[n_inputs:]
        params = module.parameters()
        modules = _unique_modules(module)
        marks = [len(_pending_stack(m)) for m in modules]
        with _bound(params, values):
            out = module(*inputs)
        taken = _take_contexts(modules, marks)  # always off the stacks: never left behind
        if not isinstance(out, Tensor):
            raise TypeError(
                f"as_function: {module._label()} returned {type(out).__name__}; "
                "a wrapped module must return one tensor"
            )
        # Return a detached alias: autograd attaches its node to the returned object, and the
        # handgrad context (kept in ctx) holds ``out`` itself; returning ``out`` would make a
        # ctx -> out -> grad_fn -> ctx cycle that the garbage collector cannot see through.
        result = out.detach()
        ctx.call = _Call(module, params, n_inputs, taken if module.training and keep else None)
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        ctx.save_for_backward(result, *tensors, *values)  # in-place changes are caught
        ctx.n_saved_inputs = len(tensors)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        call: _Call = ctx.call
        saved = ctx.saved_tensors  # raises if an input/output/parameter changed in place
        values = saved[1 + ctx.n_saved_inputs :]
        if call.contexts is None:
            raise RuntimeError(
                f"as_function({call.module._label()}): the forward ran in eval mode, which "
                "keeps no context for backward; call .train() on the wrapper before a forward "
                "you back-propagate through"
            )
        wanted = ctx.needs_input_grad[3 : 3 + call.n_inputs]
        before = [p.g for p in call.params]
        with _bound(call.params, values):
            _put_back(call.contexts)
            try:
                for p in call.params:
                    p.g = None
                grads = call.module.backward(dout, need_input_grad=any(wanted))
                param_grads = [p.g for p in call.params]
            finally:
                for p, g in zip(call.params, before, strict=True):
                    p.g = g
        input_grads = (grads,) if call.n_inputs == 1 else tuple(grads)
        input_grads = tuple(g if w else None for g, w in zip(input_grads, wanted, strict=True))
        return (None, None, None, *input_grads, *param_grads)


def _wants_grad(tensors: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in tensors
    )


def functional_call(module: Module, params: Sequence[Tensor], *inputs: Any) -> Tensor:
    """``module(*inputs)`` computed with ``params`` in place of ``module.parameters()``, as a
    PyTorch-differentiable function of both (the backward is the module's hand-written one).

    The module itself is not changed. This is the form ``torch.autograd.gradcheck`` needs::

        params = [p.detach().double().requires_grad_() for p in layer.parameters()]
        torch.autograd.gradcheck(lambda x, *ps: functional_call(layer, ps, x), (x, *params))
    """
    expected = module.parameters()
    if len(params) != len(expected):
        raise ValueError(
            f"functional_call: {module._label()} has {len(expected)} parameters, "
            f"got {len(params)} tensors"
        )
    for i, (p, v) in enumerate(zip(expected, params, strict=True)):
        if p.shape != v.shape:
            raise ValueError(
                f"functional_call: parameter {i} of {module._label()} has shape "
                f"{tuple(p.shape)}, got {tuple(v.shape)}"
            )
    keep = _wants_grad([*inputs, *params])
    return HandgradFunction.apply(module, len(inputs), keep, *inputs, *params)


class TorchModule(nn.Module):
    """A handgrad module as a ``torch.nn.Module``; see :func:`as_function`.

    Attributes:
        module: the wrapped handgrad module. Its parameters share storage with this wrapper's
            ``nn.Parameter`` s (same dotted names, so ``state_dict()`` keys match handgrad's),
            and its buffers are the wrapper's buffers.

    Move and cast the wrapper (``.to``, ``.double()``), not the inner module: the inner
    module's parameters and buffers are re-pointed at the wrapper's at each forward.
    """

    def __init__(self, module: Module) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"as_function needs a handgrad Module, got {type(module).__name__}")
        self.module = module  # a handgrad Module, so nn.Module does not register it
        self._hg_params = module.parameters()
        self._param_names = [n for n, _ in module.named_parameters()]
        self._buffer_names = [n for n, _ in module.named_buffers()]
        for name, p in module.named_parameters():
            # Shares p's storage: torch optimizers update the handgrad weights in place.
            owner, leaf = self._owner(name)
            owner.register_parameter(leaf, nn.Parameter(p.detach().as_subclass(Tensor)))
        for name, b in module.named_buffers():
            owner, leaf = self._owner(name)
            owner.register_buffer(leaf, b)
        self.train(module.training)

    def _owner(self, dotted: str) -> tuple[nn.Module, str]:
        """The (created on demand) container module that holds ``a.b.c``'s leaf ``c``."""
        *path, leaf = dotted.split(".")
        owner: nn.Module = self
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        return owner, leaf

    def _torch_params(self) -> list[Tensor]:
        return [self.get_parameter(n) for n in self._param_names]

    def _sync(self) -> None:
        """Point the handgrad parameters and buffers at the wrapper's current tensors (they
        differ only after ``.to()``/``.double()`` on the wrapper replaced them)."""
        for p, t in zip(self._hg_params, self._torch_params(), strict=True):
            if not _same_storage(p, t):
                p.data = t.detach()
        for name in self._buffer_names:
            owner, leaf = self._hg_owner(name)
            setattr(owner, leaf, self.get_buffer(name))

    def _hg_owner(self, dotted: str) -> tuple[Module, str]:
        *path, leaf = dotted.split(".")
        owner: Any = self.module
        for part in path:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        return owner, leaf

    def forward(self, *inputs: Any) -> Tensor:
        self._sync()
        params = self._torch_params()
        keep = _wants_grad([*inputs, *params])
        out = HandgradFunction.apply(self.module, len(inputs), keep, *inputs, *params)
        # A layer may have replaced a buffer (running statistics) rather than updated it.
        for name in self._buffer_names:
            owner, leaf = self._hg_owner(name)
            t_owner, t_leaf = self._owner(name)
            t_owner._buffers[t_leaf] = getattr(owner, leaf)
        return out

    def train(self, mode: bool = True) -> TorchModule:
        super().train(mode)
        self.module.train(mode)
        return self

    def extra_repr(self) -> str:
        return repr(self.module).replace("\n", "\n  ")


def as_function(module: Module) -> TorchModule:
    """Wrap a handgrad module for use inside PyTorch: see :class:`TorchModule`.

    Example:
        >>> layer = as_function(Linear(4, 3))
        >>> y = layer(torch.randn(2, 4, requires_grad=True))
        >>> y.sum().backward()          # runs Linear.bwd; layer.weight.grad is (4, 3)
    """
    return TorchModule(module)


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


def _only_if(ok: bool, what: str) -> None:
    if not ok:
        raise TypeError(f"no handgrad equivalent for {what}")


def _conv_from_torch(t: nn.Conv2d) -> Conv2d:
    _only_if(isinstance(t.padding, tuple) and t.padding_mode == "zeros", f"{t} (padding)")
    return Conv2d(t.in_channels, t.out_channels, t.kernel_size, t.stride, t.padding,  # type: ignore[arg-type]
                  t.dilation, t.groups, bias=_has_bias(t))  # fmt: skip


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
register(Conv2d, nn.Conv2d,
         lambda m: nn.Conv2d(m.in_channels, m.out_channels, m.geometry.kernel, m.geometry.stride,
                             m.geometry.padding, m.geometry.dilation, m.geometry.groups,
                             bias=_has_bias(m)),
         _conv_from_torch, W_B)
register(BatchNorm1d, nn.BatchNorm1d, lambda m: nn.BatchNorm1d(*_bn_args(m)),
         lambda t: BatchNorm1d(*_bn_args(t)), BN)
register(BatchNorm2d, nn.BatchNorm2d, lambda m: nn.BatchNorm2d(*_bn_args(m)),
         lambda t: BatchNorm2d(*_bn_args(t)), BN)
register(BatchNormReLU2d, TorchBatchNormReLU2d, lambda m: TorchBatchNormReLU2d(*_bn_args(m)),
         lambda t: BatchNormReLU2d(*_bn_args(t)), BN)
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
