"""A handgrad module as a ``torch.autograd.Function``: ``as_function(module)`` gives an
``nn.Module`` that PyTorch trains with the module's own hand-written backward. How it follows
PyTorch's "Extending autograd" rules is written down in ``docs/design.md``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from handgrad.nn.module import Module, Parameter

Pending = list[tuple[Module, list[Any]]]


def _unique_modules(module: Module) -> list[Module]:
    """Every sub-module once (a module used twice in the tree appears twice in ``modules()``)."""
    seen: dict[int, Module] = {}
    for m in module.modules():
        seen.setdefault(id(m), m)
    return list(seen.values())


def _pending_stack(m: Module) -> list[Any]:
    # The Module's per-call context stack (docs/design.md, note 1). The bridge is the one
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
