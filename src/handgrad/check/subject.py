"""The layer under check, whoever wrote it: how to call it, which tensors it holds, and private
float64 copies of it.

Three protocols are accepted, duck-typed (none needs handgrad's base class):

1. a :class:`handgrad.Module`: ``forward(*args)`` / ``bwd(out, *args)``, driven through
   ``module(*args)`` and ``module.backward(dout)``;
2. the lesson's first classes: ``__call__`` keeps ``self.inp`` and ``self.out``, and
   ``backward()`` reads ``self.out.g`` and sets ``.g`` on the input and on the weights;
3. the lesson's own ``Module`` base: ``__call__`` keeps ``self.args`` and ``self.out``, and
   ``backward()`` calls ``self.bwd(self.out, *self.args)``.

Protocols 2 and 3 are driven the same way: ``out = layer(*inputs)``, ``out.g = dout``,
``layer.backward()`` (or ``layer.backward(dout)`` when it takes an argument), then the
gradients are read from the ``.g`` of the inputs and of the tensors the layer holds.
"""

from __future__ import annotations

import copy
import inspect
import random
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handgrad.nn.module import Module, Parameter, input_names

# Names that a float input gets when it is the target of a loss (never differentiated when
# the backward sets no gradient for it).
TARGET_NAMES = frozenset(
    {"targ", "target", "targets", "y", "yb", "y_true", "ytrue", "label", "labels", "truth"}
)
# Packages whose objects are leaves: their attributes are not searched for weights.
_LEAF_PACKAGES = frozenset({"torch", "numpy", "random", "sympy", "matplotlib"})
_MAX_DEPTH = 8


class NotALayer(TypeError):
    """The object follows none of the three protocols."""


@dataclass
class Found:
    """A floating-point tensor the layer holds, under its dotted name (``layers.0.w``)."""

    name: str
    tensor: Tensor
    buffer: bool  # registered with register_buffer: state, never differentiated


@dataclass
class Copy:
    """One private float64 copy of the layer: the object, its tensors by name, and its own
    random generators with the state each must be put back to before a forward."""

    layer: Any
    tensors: dict[str, Tensor]
    generators: list[tuple[Any, Any]]


@dataclass
class Subject:
    """A layer prepared for checking: its protocol, its inputs' names, what it holds."""

    layer: Any
    kind: str  # "module" (handgrad) or "lesson" (protocols 2 and 3)
    names: list[str]
    held: list[Found]
    backward_takes_dout: bool
    generators: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, layer: Any, n_inputs: int) -> Subject:
        if isinstance(layer, Module) and _positional(layer.backward) > 0:
            kind, signature_of = "module", layer.forward
        elif callable(layer) and callable(getattr(layer, "backward", None)):
            kind = "lesson"
            signature_of = getattr(layer, "forward", None) or layer.__call__
        else:
            raise NotALayer(
                f"{type(layer).__name__} is not a layer: give a handgrad Module (forward and "
                "bwd) or an object with __call__ and backward() as in the lesson"
            )
        takes_dout = kind == "lesson" and _positional(layer.backward, required=True) > 0
        names = input_names(signature_of, n_inputs)
        held, gens = _find(layer)
        for f in held:  # a weight called like an input (self.x) must not shadow the input x
            if f.name in names:
                f.name = f"self.{f.name}"
        return cls(layer, kind, names, held, takes_dout, gens)

    @property
    def label(self) -> str:
        if isinstance(self.layer, Module):
            return self.layer._label()
        return type(self.layer).__name__

    # ---------------------------------------------------------------------------- copies
    def fresh(self) -> Copy:
        """A float64 deep copy of the layer, with the tensors it holds in that copy by name.

        Every floating-point tensor is replaced by a float64 copy (a plain float32 weight is
        converted, not a crash); random generators it holds are copied with their state, so
        every copy draws the same numbers. The user's layer is never changed.
        """
        memo: dict[int, Any] = {}
        for f in self.held:
            memo[id(f.tensor)] = _as_float64(f.tensor)
        gens = [_clone_generator(g) for g in self.generators]
        for g, new_g in zip(self.generators, gens, strict=True):
            memo[id(g)] = new_g
        pending = _pop_pending(self.layer)
        try:
            new = copy.deepcopy(self.layer, memo)
        finally:
            for m, saved in pending:
                m.__dict__["_pending"] = saved
        for m in _modules_in(new):
            m.train()
        tensors = {f.name: memo[id(f.tensor)] for f in self.held}
        return Copy(new, tensors, [(g, _generator_state(g)) for g in gens])

    def drop_replaced(self, c: Copy) -> None:
        """Forget the tensors a forward on ``c`` replaced: what an earlier call kept for its
        backward (``self.inp``, ``self.out``, ``self.args``), not weights. Checking those
        stale copies would skip the real input under the same name."""
        reachable = {id(v) for _, v in _walk(c.layer, "", set(), 0) if isinstance(v, Tensor)}
        gone = {n for n, t in c.tensors.items() if id(t) not in reachable}
        self.held = [f for f in self.held if f.name not in gone]
        for n in gone:
            del c.tensors[n]

    # ------------------------------------------------------------------------- the calls
    def forward(self, layer: Any, inputs: Sequence[Tensor]) -> Any:
        return layer(*inputs)

    def backward(self, layer: Any, out: Tensor, dout: Tensor) -> Any:
        """Run the hand-written backward; return what ``backward`` returned."""
        if self.kind == "module":
            return layer.backward(dout)
        if self.backward_takes_dout:
            out.g = dout
            return layer.backward(dout)
        out.g = dout
        return layer.backward()

    def input_grads(self, inputs: Sequence[Tensor], returned: Any) -> list[Any]:
        """Each input's gradient as the backward left it (``None`` where it set none)."""
        if self.kind == "module":
            grads = returned if isinstance(returned, tuple) else (returned,)
            return list(grads) + [None] * (len(inputs) - len(grads))
        return [x.__dict__.get("g") for x in inputs]

    def forget(self, layer: Any) -> None:
        """Drop what a forward kept for backward (a copy is called many times)."""
        for m in _modules_in(layer):
            m.__dict__.pop("_pending", None)


@contextmanager
def repeatable(seed: int, generators: list[tuple[Any, Any]]) -> Iterator[None]:
    """Run a forward with every random source at the same state each time: torch's global
    generator re-seeded, numpy's and Python's global generators seeded, and the layer's own
    generators put back to their first state. The caller's generators are restored after."""
    # Seeding the default generator directly: torch.manual_seed also queues a seeding of every
    # CUDA device, a cost thousands of finite-difference forwards would pay.
    cpu = torch.default_generator
    cpu_state, np_state, py_state = cpu.get_state(), np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    cpu.manual_seed(seed)
    if cuda_states is not None:
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    for gen, state in generators:
        _set_generator_state(gen, state)
    try:
        yield
    finally:
        cpu.set_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


# ------------------------------------------------------------------------------ discovery
def _find(layer: Any) -> tuple[list[Found], list[Any]]:
    """Every floating-point tensor reachable from ``layer`` (first name wins for a tensor held
    twice) and every random generator."""
    buffers: set[int] = set()
    for m in _modules_in(layer):
        for _, b in m.named_buffers():
            buffers.add(id(b))
    found: dict[int, Found] = {}
    gens: dict[int, Any] = {}
    for name, value in _walk(layer, "", set(), 0):
        if isinstance(value, Tensor):
            if value.is_floating_point() and id(value) not in found:
                found[id(value)] = Found(name, value, id(value) in buffers)
        elif _is_generator(value):
            gens.setdefault(id(value), value)
    return list(found.values()), list(gens.values())


def _walk(obj: Any, prefix: str, seen: set[int], depth: int) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Tensor) or _is_generator(obj):
        yield prefix, obj
        return
    if id(obj) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(obj))
    if isinstance(obj, list | tuple):
        items: Iterator[tuple[Any, Any]] = iter(enumerate(obj))
    elif isinstance(obj, dict):
        items = iter(obj.items())
    elif _searchable(obj):
        items = iter(_attributes(obj))
    else:
        return
    for key, value in items:
        yield from _walk(value, f"{prefix}.{key}" if prefix else str(key), seen, depth + 1)


def _attributes(obj: Any) -> Iterator[tuple[str, Any]]:
    for name, value in vars(obj).items():
        # handgrad's own bookkeeping (_pending, caches, hooks) and Python's dunders are not
        # the layer's tensors; a plain object's _w is.
        if name.startswith("__") or (isinstance(obj, Module) and name.startswith("_")):
            continue
        yield name, value


def _searchable(obj: Any) -> bool:
    """A user's object whose attributes may hold weights (not a function, class or module,
    nor an object of torch, numpy or the standard library)."""
    if isinstance(obj, type | types.ModuleType | types.FunctionType | types.MethodType):
        return False
    if not hasattr(obj, "__dict__"):
        return False
    package = (type(obj).__module__ or "").partition(".")[0]
    return package not in _LEAF_PACKAGES


def _modules_in(obj: Any) -> list[Module]:
    """Every handgrad Module reachable from ``obj`` (a plain model may hold some)."""
    out: dict[int, Module] = {}
    stack, seen = [(obj, 0)], set()
    while stack:
        o, depth = stack.pop()
        if id(o) in seen or depth > _MAX_DEPTH or isinstance(o, Tensor):
            continue
        seen.add(id(o))
        if isinstance(o, Module):
            out[id(o)] = o
        if isinstance(o, list | tuple):
            stack += [(v, depth + 1) for v in o]
        elif isinstance(o, dict):
            stack += [(v, depth + 1) for v in o.values()]
        elif _searchable(o):
            stack += [(v, depth + 1) for _, v in _attributes(o)]
    return list(out.values())


def _pop_pending(layer: Any) -> list[tuple[Module, Any]]:
    popped = []
    for m in _modules_in(layer):
        saved = m.__dict__.pop("_pending", None)
        if saved is not None:
            popped.append((m, saved))
    return popped


def _as_float64(t: Tensor) -> Tensor:
    data = t.detach().to(dtype=torch.float64).clone()
    if isinstance(t, Parameter):
        return Parameter(data)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(data, requires_grad=False)
    return data


def _positional(fn: Any, required: bool = False) -> int:
    """How many positional parameters ``fn`` takes (only those without a default if
    ``required``); a ``*args`` counts as one."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(
        1
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        and not (required and (p.default is not p.empty or p.kind == p.VAR_POSITIONAL))
    )


# ------------------------------------------------------------------------------ generators
def _is_generator(obj: Any) -> bool:
    return isinstance(
        obj, torch.Generator | np.random.Generator | np.random.RandomState | random.Random
    )


def _generator_state(g: Any) -> Any:
    if isinstance(g, torch.Generator):
        return g.get_state()
    if isinstance(g, np.random.Generator):
        return copy.deepcopy(g.bit_generator.state)
    if isinstance(g, np.random.RandomState):
        return g.get_state()
    return g.getstate()


def _set_generator_state(g: Any, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif isinstance(g, np.random.Generator):
        g.bit_generator.state = copy.deepcopy(state)
    elif isinstance(g, np.random.RandomState):
        g.set_state(state)
    else:
        g.setstate(state)


def _clone_generator(g: Any) -> Any:
    if isinstance(g, torch.Generator):
        new = torch.Generator(device=g.device)
        new.set_state(g.get_state())
        return new
    return copy.deepcopy(g)
