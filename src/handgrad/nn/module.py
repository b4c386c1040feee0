"""``Module``, ``Parameter`` and ``Sequential``: the lesson's layer API, made correct.

A layer implements ``forward(*args)`` and ``bwd(out, *args)``, which reads ``out.g`` and sets
``arg.g`` and ``param.g``. Each call keeps its own context for its backward, gradients flow by
return value, parameter gradients accumulate, and misuse is an error: the design and its
reasons are in ``docs/design.md``.

Why one file of this length: ``Module`` is most of it, and its call/backward bookkeeping is
the contract every layer relies on, best read in one place; the file imports only torch, so
``benchmarks/bench_module.py`` can load one version of it beside another to time the two.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from handgrad.nn.summary import Summary, summary

ForwardHook = Callable[["Module", tuple[Any, ...], Any], None]
BackwardHook = Callable[["Module", Tensor, tuple[Tensor | None, ...]], None]


class Parameter(torch.Tensor):
    """A tensor that an optimizer trains. Its gradient lives in ``.g`` (``None`` until a
    backward pass fills it), the lesson's name for it.

    It is a plain tensor for every operation (torch-function dispatch is disabled, as for
    ``torch.nn.Parameter``, so arithmetic on it costs nothing extra and returns plain tensors).
    """

    g: Tensor | None

    # Operations on a parameter return plain tensors and skip subclass dispatch entirely.
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __new__(cls, data: Tensor) -> Parameter:
        param = torch.Tensor._make_subclass(cls, data.detach(), False)
        param.g = None
        return param

    def __deepcopy__(self, memo: dict[int, Any]) -> Parameter:
        new = Parameter(self.detach().clone())
        new.g = None if self.g is None else self.g.clone()
        memo[id(self)] = new
        return new

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "handgrad never pickles parameters; use handgrad.train.checkpoint (safetensors)"
        )

    def __repr__(self) -> str:
        return f"Parameter({tuple(self.shape)}, dtype={self.dtype}, device={self.device})"


class HookHandle:
    """Returned by ``register_*_hook``; ``remove()`` detaches the hook."""

    def __init__(self, hooks: list[Any], hook: Any) -> None:
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


def _drop_g(t: Any) -> None:
    """Remove a ``.g`` that the framework put on an activation (never on a parameter)."""
    if isinstance(t, Tensor) and not isinstance(t, Parameter):
        t.__dict__.pop("g", None)


class Module:
    """Base class of every layer, loss and model.

    Subclasses implement ``forward(*args)`` and ``bwd(out, *args)``. Inside ``bwd``,
    ``out.g`` holds dL/dout; set ``arg.g`` for each tensor argument that has a gradient and
    ``param.g`` for each parameter (assign, the framework accumulates).
    ``self.needs_input_grad[i]`` says whether argument ``i``'s gradient is wanted: a layer may
    skip computing it when it is ``False``. Per-call values that backward needs besides the
    arguments and the output are stored in forward with ``self.save_for_backward(...)`` and read
    in ``bwd`` as ``self.saved``.

    Attributes:
        training: ``True`` after ``train()`` (the default), ``False`` after ``eval()``.
        no_grad_args: positions of arguments that get no gradient (targets, labels).
        max_pending: how many forward calls may wait for their backward before it is an error.
    """

    training: bool = True
    no_grad_args: tuple[int, ...] = ()
    max_pending: int = 64
    needs_input_grad: tuple[bool, ...] = ()
    saved: tuple[Any, ...] = ()

    # ----------------------------------------------------------------------------- the math
    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(*args)")

    def bwd(self, out: Tensor, *args: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement bwd(out, *args): read out.g, set arg.g"
        )

    def save_for_backward(self, *values: Any) -> None:
        """Keep ``values`` for this call's ``bwd`` (readable there as ``self.saved``)."""
        self.__dict__["_to_save"] = values

    # ------------------------------------------------------------------------- call / backward
    def __call__(self, *args: Any) -> Any:
        # This runs once per layer per batch, so it is kept to plain dict operations
        # (benchmarks/bench_module.py times the bookkeeping).
        d = self.__dict__
        if len(args) > 1:
            args = _unalias(args)
        d["_to_save"] = ()
        out = self.forward(*args)
        saved = d.pop("_to_save", ())
        hooks = d.get("_forward_hooks")
        if hooks:
            for hook in hooks:
                hook(self, args, out)
        if self.training:
            pending = d.get("_pending")
            if pending is None:
                pending = d["_pending"] = []
            elif len(pending) >= self.max_pending:
                raise RuntimeError(
                    f"{self._label()}: {len(pending)} forward calls are waiting for backward; "
                    "call backward after each training forward, or switch to .eval() for "
                    "inference"
                )
            pending.append((args, out, saved))
        return out

    def backward(self, dout: Tensor | None = None, *, need_input_grad: bool = True) -> Any:
        """Back-propagate ``dout`` (dL/dout; omitted for a scalar loss, meaning 1) through the
        most recent forward call that has not been back-propagated yet.

        Fills ``.g`` of this module's parameters (accumulating) and returns the gradient of the
        input: one tensor for a one-argument module, else a tuple with one entry per argument
        (``None`` for arguments without a gradient). With ``need_input_grad=False`` the input
        gradient is not computed (``None`` is returned), which saves the largest product of a
        first layer's backward.
        """
        pending = self.__dict__.get("_pending")
        if not pending:
            why = (
                "it is in eval mode, where forward keeps nothing; call .train() first"
                if not self.training
                else "every forward call has been back-propagated already (backward called "
                "twice?) or forward never ran"
            )
            raise RuntimeError(
                f"{self._label()}.backward(): no forward call to go back through: {why}"
            )
        args, out, saved = pending.pop()
        if dout is None:
            if not isinstance(out, Tensor) or out.numel() != 1:
                raise RuntimeError(
                    f"{self._label()}.backward() needs dout unless the output is a scalar loss"
                )
            dout = torch.ones_like(out)
        elif isinstance(out, Tensor) and dout.shape != out.shape:
            raise ValueError(
                f"{self._label()}.backward(): dout has shape {tuple(dout.shape)} but the "
                f"output had {tuple(out.shape)}"
            )
        grads = self._backprop(args, out, saved, dout, need_input_grad)
        return grads[0] if len(grads) == 1 else grads

    def _backprop(
        self, args: tuple[Any, ...], out: Tensor, saved: tuple[Any, ...], dout: Tensor, want: bool
    ) -> tuple[Tensor | None, ...]:
        d = self.__dict__
        own = d.get("_own_parameter_cache")
        if own is None:
            own = self._own_parameter_tuple()
        before = [p.g for p in own]
        for p in own:
            p.g = None
        no_grad = self.no_grad_args
        # Framework state is written straight into __dict__ (no __setattr__, no cache reset).
        d["needs_input_grad"] = tuple(
            [
                want and i not in no_grad and isinstance(a, Tensor) and a.is_floating_point()
                for i, a in enumerate(args)
            ]
        )
        d["saved"] = saved
        activations = [a for a in args if isinstance(a, Tensor) and not isinstance(a, Parameter)]
        for a in activations:
            a.__dict__.pop("g", None)  # no stale .g can be mistaken for this call's gradient
        out.g = dout
        try:
            returned = self.bwd(out, *args)
            if returned is not None:
                raise TypeError(
                    f"{self._label()}.bwd returned a {type(returned).__name__}: handgrad reads "
                    "gradients from arg.g and param.g, not from what bwd returns (the "
                    "autograd.Function habit); assign x.g = ... instead"
                )
            grads = tuple(
                [
                    a.__dict__.get("g")
                    if isinstance(a, Tensor) and not isinstance(a, Parameter)
                    else None
                    for a in args
                ]
            )
        finally:
            _drop_g(out)
            for a in activations:
                a.__dict__.pop("g", None)
            d["saved"] = ()
            for p, old in zip(own, before, strict=True):
                if p.g is None:
                    p.g = old
                elif old is not None:
                    p.g = old + p.g
        self._check_grads(args, grads, own)
        hooks = d.get("_backward_hooks")
        if hooks:
            for hook in hooks:
                hook(self, dout, grads)
        return grads

    def _check_grads(
        self, args: tuple[Any, ...], grads: tuple[Tensor | None, ...], own: tuple[Parameter, ...]
    ) -> None:
        for i, (a, g) in enumerate(zip(args, grads, strict=True)):
            if g is not None and g.shape != a.shape:
                name = input_names(self.forward, len(args))[i]
                raise GradientShapeError(self, name, a, g)
        for p in own:
            if p.g is not None and p.g.shape != p.shape:
                name = next(n for n, q in self._named_own_parameters() if q is p)
                raise GradientShapeError(self, f"{name}", p, p.g)

    def clear_saved(self) -> None:
        """Drop every forward context waiting for backward, here and in all sub-modules."""
        for m in self.modules():
            m.__dict__.pop("_pending", None)

    @property
    def pending(self) -> int:
        """How many forward calls of this module wait for their backward."""
        return len(self.__dict__.get("_pending", ()))

    # ------------------------------------------------------------------------------- hooks
    def register_forward_hook(self, hook: ForwardHook) -> HookHandle:
        """Call ``hook(module, args, out)`` after every forward of this module."""
        hooks = self.__dict__.setdefault("_forward_hooks", [])
        hooks.append(hook)
        return HookHandle(hooks, hook)

    def register_backward_hook(self, hook: BackwardHook) -> HookHandle:
        """Call ``hook(module, dout, input_grads)`` after every backward of this module."""
        hooks = self.__dict__.setdefault("_backward_hooks", [])
        hooks.append(hook)
        return HookHandle(hooks, hook)

    # ------------------------------------------------------------------- structure and state
    def register_buffer(self, name: str, tensor: Tensor) -> None:
        """Attach state that is saved and moved with the module but not trained."""
        buffers = self.__dict__.setdefault("_buffer_names", [])
        if name not in buffers:
            buffers.append(name)
        setattr(self, name, tensor)

    def _children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def _named_own_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter) and not name.startswith("_"):
                yield name, value

    def _own_parameters(self) -> Iterator[Parameter]:
        yield from self._own_parameter_tuple()

    def _own_parameter_tuple(self) -> tuple[Parameter, ...]:
        """This module's own parameters, found once and cached, since every backward needs them
        (scanning ``vars(self)`` per call is slow for a small layer). Assigning or deleting a
        public attribute drops the cache (``__setattr__`` below)."""
        own = self.__dict__.get("_own_parameter_cache")
        if own is None:
            own = tuple(p for _, p in self._named_own_parameters())
            self.__dict__["_own_parameter_cache"] = own
        return own

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            self.__dict__.pop("_own_parameter_cache", None)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if not name.startswith("_"):
            self.__dict__.pop("_own_parameter_cache", None)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every sub-module, depth first, with dotted names."""
        yield prefix, self
        for name, child in self._children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Every parameter once (a shared one under its first name), with dotted names."""
        seen: set[int] = set()
        for prefix, m in self.named_modules():
            for name, p in m._named_own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        for prefix, m in self.named_modules():
            for name in m.__dict__.get("_buffer_names", ()):
                yield (f"{prefix}.{name}" if prefix else name), getattr(m, name)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``.g = None``, which the next backward fills)."""
        for p in self.parameters():
            p.g = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
            if not mode:
                m.__dict__.pop("_pending", None)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Module:
        """Move/cast parameters (in place, so optimizers keep them) and buffers."""
        for p in self.parameters():
            g = p.g
            new = p.data.to(device=device, dtype=dtype if p.is_floating_point() else None)
            if torch._has_compatible_shallow_copy_type(p, new):
                p.data = new
            else:  # e.g. cpu -> meta: keep the Python object (and .g) by swapping contents
                torch.utils.swap_tensors(p, Parameter(new))
            p.g = None if g is None else g.to(device=device, dtype=p.dtype)
        for m in self.modules():
            for name in m.__dict__.get("_buffer_names", ()):
                b = getattr(m, name)
                setattr(
                    m, name, b.to(device=device, dtype=dtype if b.is_floating_point() else None)
                )
        return self

    def double(self) -> Module:
        return self.to(dtype=torch.float64)

    def float(self) -> Module:
        return self.to(dtype=torch.float32)

    def copy(self) -> Module:
        """A deep copy with nothing pending and no hooks' shared state."""
        self_pending = {id(m): m.__dict__.pop("_pending", None) for m in self.modules()}
        try:
            return copy.deepcopy(self)
        finally:
            for m in self.modules():
                if self_pending.get(id(m)) is not None:
                    m.__dict__["_pending"] = self_pending[id(m)]

    def state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers by dotted name (detached plain tensors, for saving)."""
        out = {n: p.detach().as_subclass(Tensor) for n, p in self.named_parameters()}
        out.update({n: b.detach() for n, b in self.named_buffers()})
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy values in place; every name and shape must match exactly."""
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state does not fit {type(self).__name__}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        for name, value in state.items():
            target = own[name]
            if target.shape != value.shape:
                raise ValueError(
                    f"state['{name}'] has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(value)

    # ------------------------------------------------------------------------------ display
    def summary(self, input_shape: Sequence[int]) -> Summary:
        """Layers, output shapes and parameter counts for one example of ``input_shape``
        (without the batch dimension); ``print`` it for the table (:mod:`handgrad.nn.summary`)."""
        return summary(self, input_shape)

    def extra_repr(self) -> str:
        return ""

    def _label(self) -> str:
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra})"

    def __repr__(self) -> str:
        children = list(self._children())
        if not children:
            return self._label()
        lines = [f"{type(self).__name__}("]
        if self.extra_repr():
            lines.append(f"  {self.extra_repr()}")
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join([*lines, ")"])


class GradientShapeError(RuntimeError):
    """``bwd`` set a gradient whose shape is not its tensor's. Carries the tensor and the
    gradient, so that :func:`handgrad.gradcheck` can say what the gradient looks like (a
    transpose, a sum not taken)."""

    def __init__(self, module: Module, name: str, tensor: Tensor, grad: Tensor) -> None:
        self.name, self.tensor, self.grad = name, tensor, grad
        super().__init__(
            f"{module._label()}.bwd set {name}.g with shape {tuple(grad.shape)}, but {name} "
            f"has shape {tuple(tensor.shape)}"
        )


def input_names(forward: Callable[..., Any], n: int) -> list[str]:
    """The names of ``forward``'s first ``n`` positional parameters (``inp``, ``targ``), so
    messages name an argument as its author did; ``input[i]`` where the signature says
    nothing (``*args``)."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) < n:
        names += [f"input[{i}]" for i in range(len(names), n)]
    return names[:n]


def _unalias(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Give a tensor passed twice a distinct view for its second slot (docs/design.md, note 2)."""
    seen: set[int] = set()
    fixed = list(args)
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            if id(a) in seen:
                fixed[i] = a.view_as(a)
            seen.add(id(a))
    return tuple(fixed)


class Sequential(Module):
    """Apply ``layers`` in order; back-propagate through them in reverse.

    Example:
        >>> model = Sequential(Linear(784, 50), ReLU(), Linear(50, 10))
    """

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def bwd(self, out: Tensor, x: Tensor) -> None:
        g = out.g
        # An input gradient is computed only when someone wants it: the caller (for layer 0),
        # or a layer before that learns. Leading layers without parameters or sub-modules
        # (the cnn's Reshape) need none, so the first layer after them skips its input
        # gradient (for the cnn's first conv: a product and a col2im per batch), and they are
        # only popped (their forward context dropped), not back-propagated.
        lead = 0 if self.needs_input_grad[0] else self._parameterless_lead()
        for i in range(len(self.layers) - 1, lead - 1, -1):
            g = self.layers[i].backward(g, need_input_grad=i > lead or self.needs_input_grad[0])
        for i in range(lead - 1, -1, -1):
            self.layers[i].__dict__["_pending"].pop()
        x.g = g if lead == 0 else None

    def _parameterless_lead(self) -> int:
        """How many leading layers are leaves without parameters or backward hooks (whose
        backward has nothing to give, or to show, when the model's input needs no gradient)."""
        n = 0
        for layer in self.layers[:-1]:
            d = layer.__dict__
            if layer._own_parameter_tuple() or d.get("_backward_hooks") or any(layer._children()):
                break
            n += 1
        return n

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
