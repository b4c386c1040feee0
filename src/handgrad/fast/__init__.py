"""The fast path: a training step of a Linear/ReLU network in one compiled call.

At small batches a training step of the lesson's MLP is a few dozen small kernels, and the
Python around each of them (the :class:`~handgrad.nn.module.Module` contract, argument
parsing, tensor wrappers) costs more than their arithmetic. :class:`FastStep` runs the whole
forward pass, the loss and the backward pass of a supported model in one C++ function
(``mlp_step.cpp``, built with ``torch.utils.cpp_extension`` on first use and cached), and
leaves the gradients in ``param.g`` exactly as ``model.backward`` would. Given the optimizer
too, a call is the whole training step: plain SGD (no momentum) is then folded into the same
C++ call, each weight updated by one GEMM (``W <- (1 - lr wd) W - lr h^T d``) without ever
writing its gradient; any other optimizer steps in Python after the compiled forward and
backward. (benchmarks/RESULTS.md, "the fast path", has the measurements.)

The readable path stays the reference: the C++ code is the same math as
:mod:`handgrad.nn.functional`, step for step, and tests/test_fast.py checks the weights after
several steps against it. Where the extension cannot be built (no compiler, no Python
headers, ``HANDGRAD_FAST=0``) or the model is not one it supports, :class:`FastStep` says so
in one line on stderr, once, and runs the readable Python path instead.

Supported: a :class:`~handgrad.nn.module.Sequential` of :class:`~handgrad.nn.layers.Linear` layers,
each optionally followed by one :class:`~handgrad.nn.layers.ReLU`, with
:class:`~handgrad.nn.layers.losses.CrossEntropyLoss` or
:class:`~handgrad.nn.layers.losses.MSELoss`, no hooks.

Example:
    >>> step = FastStep(model, loss_fn)
    >>> for xb, yb in train_dl:
    ...     preds, loss, _ = step(xb, yb)  # forward + backward, p.g filled
    ...     opt.step()
    ...     opt.zero_grad()
    >>> train = FastStep(model, loss_fn, SGD(model.parameters(), lr=0.1))
    >>> for xb, yb in train_dl:
    ...     preds, loss, _ = train(xb, yb)  # forward + backward + update; p.g stays None
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from handgrad._build import Build
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.module import Module, Sequential
from handgrad.optim.optimizers import SGD, Optimizer

_SOURCE = Path(__file__).with_name("mlp_step.cpp")
_CE, _MSE = 0, 1
_LOSS_SLOTS = 256  # losses per block (see FastStep._loss_slot)

_noticed: set[str] = set()


def _notice(reason: str) -> None:
    """One line on stderr, once per distinct reason."""
    if reason not in _noticed:
        _noticed.add(reason)
        print(f"handgrad: fast path unavailable ({reason}); using the Python path", file=sys.stderr)


def _build() -> ModuleType:
    # deferred: cpp_extension pulls in setuptools and the compiler tool chain
    from torch.utils.cpp_extension import load

    # The source's hash in the name: two versions of handgrad (two checkouts, an upgrade)
    # never load each other's build from the shared cache.
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    return load(
        name=f"handgrad_fast_mlp_{digest}",
        sources=[str(_SOURCE)],
        extra_cflags=["-O2"],
        verbose=False,
    )


_extension = Build(_SOURCE, _build)


def load_extension() -> ModuleType | None:
    """The compiled ``mlp_step`` module, built on first use (slow, once: then cached by
    ``torch.utils.cpp_extension`` under ``TORCH_EXTENSIONS_DIR``); ``None`` if it cannot be."""
    return _extension.get()


def fast_path_status() -> tuple[bool, str]:
    """``(True, "")`` if the extension is built and loads, else ``(False, reason)``."""
    return _extension.status()


def _plan(model: Module, loss_fn: Module | None) -> tuple[list[Linear], list[bool], int, str]:
    """The linear layers, the ReLU-after flags and the loss kind, or a reason (last item) why
    this model is not supported."""

    kind = -1
    if type(loss_fn) is CrossEntropyLoss:
        kind = _CE
    elif type(loss_fn) is MSELoss:
        kind = _MSE
    elif loss_fn is not None:
        return [], [], 0, f"loss {type(loss_fn).__name__} is not CrossEntropyLoss or MSELoss"
    if not isinstance(model, Sequential) or type(model).forward is not Sequential.forward:
        return [], [], 0, f"model {type(model).__name__} is not a Sequential"
    linears: list[Linear] = []
    relu: list[bool] = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Linear) and _unmodified(layer, Linear):
            linears.append(layer)
            relu.append(False)
        elif isinstance(layer, ReLU) and _unmodified(layer, ReLU) and relu and not relu[-1]:
            relu[-1] = True
        else:
            return [], [], 0, f"layer {i} ({type(layer).__name__}) is not Linear or ReLU after one"
    if not linears:
        return [], [], 0, "the model has no layers"
    return linears, relu, kind, ""


def _unmodified(layer: Module, cls: type) -> bool:
    """The layer computes what ``cls`` computes (a subclass that only changes ``__init__``,
    such as the lesson's ``Lin``, qualifies)."""
    t = type(layer)
    return t.forward is cls.forward and t.bwd is cls.bwd  # type: ignore[attr-defined]


class FastStep:
    """Forward + loss + backward of ``model`` and ``loss_fn`` in one compiled call.

    ``step(x, target, input_grad=False)`` returns ``(preds, loss, dx)`` (``dx`` is ``None``
    unless ``input_grad``) and adds each parameter's gradient to ``p.g`` (``p.g`` is set when
    it was ``None``), as ``loss_fn.backward`` + ``model.backward`` would. Nothing is left
    pending on the modules. ``step.predict(x)`` is the forward pass alone (inference).

    With ``opt``, a call is a whole training step: it also updates the parameters and leaves
    no gradient behind (``p.g`` is ``None`` afterwards, as after ``opt.zero_grad()``). Plain
    :class:`~handgrad.optim.SGD` (``momentum=0``) over exactly the model's parameters is
    applied inside the compiled call (``fused`` is then ``True``); any other optimizer runs its
    ``step()`` and ``zero_grad()`` after the compiled forward and backward. Gradients already
    in ``p.g`` (accumulated by the caller) are included either way.

    When the model is not training, or has hooks (which the compiled code would skip), or its
    layers changed, the call takes the readable path instead. The input gradient's buffer is
    kept and written again by the next call once nobody else holds it: a fresh buffer of a
    large input's size costs more in page faults than its matrix product.

    Attributes:
        compiled: ``True`` when the C++ path runs; ``False`` when it fell back (see ``reason``).
        reason: why the fast path is not used (empty when it is).
        fused: ``True`` when the optimizer's update runs inside the compiled call.
    """

    def __init__(
        self, model: Module, loss_fn: Module | None = None, opt: Optimizer | None = None
    ) -> None:
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.linears, self.relu, self.kind, reason = _plan(model, loss_fn)
        self._layers = list(getattr(model, "layers", ()))
        self._modules = [*model.modules(), *([loss_fn] if loss_fn is not None else [])]
        ext = load_extension() if not reason else None
        if not reason and ext is None:
            reason = str(_extension.failure)
        self._ext = ext
        self._dx: Tensor | None = None
        self._losses: tuple[Tensor | None, int] = (None, 0)
        self.compiled = not reason
        self.reason = reason
        if reason:
            _notice(reason)
        self._params = [p for lin in self.linears for p in (lin.weight, lin.bias) if p is not None]
        # SGD can be folded in when it trains exactly these parameters (its momentum and
        # learning rate are read at every call: a schedule or the user may change them).
        self._same_params = opt is not None and {id(p) for p in opt.params} == {
            id(p) for p in self._params
        }

    @property
    def fused(self) -> bool:
        """Whether the next call applies the optimizer inside the compiled call."""
        opt = self.opt
        return (
            self.compiled and self._same_params and type(opt) is SGD and opt.momentum == 0.0  # type: ignore[union-attr]
        )

    def _usable(self) -> bool:
        """Compiled, and the model is still the one planned for, with no hooks."""
        if not self.compiled or self.model.layers != self._layers:  # type: ignore[attr-defined]
            return False
        for m in self._modules:
            d = m.__dict__
            if d.get("_forward_hooks") or d.get("_backward_hooks"):
                return False
        return True

    def __call__(
        self, x: Tensor, target: Tensor, *, input_grad: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        loss_fn, opt = self.loss_fn, self.opt
        if loss_fn is None:
            raise TypeError("FastStep(model) without a loss can only predict(x)")
        if not (self._usable() and self.model.training and loss_fn.training):
            out = self._python(x, target, input_grad)
        else:
            # Fold SGD in only when this batch's gradient is the whole gradient.
            fuse = self.fused and all(p.g is None for p in self._params)  # type: ignore[attr-defined]
            out = self._compiled(x, target, input_grad, fuse)
            # Updated in C++, unless bad input sent the call down the readable path, which
            # leaves gradients for the optimizer step below.
            if fuse and all(p.g is None for p in self._params):  # type: ignore[attr-defined]
                opt.count_step()  # type: ignore[union-attr]
                return out
        if opt is not None:
            opt.step()
            opt.zero_grad()
        return out

    def _compiled(
        self, x: Tensor, target: Tensor, input_grad: bool, fuse: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        loss_fn = self.loss_fn
        weights = [lin.weight for lin in self.linears]
        biases = [lin.bias for lin in self.linears]
        # Reuse the last input gradient's memory only if this object is its sole holder
        # (getrefcount sees our attribute and its own argument); C++ also checks for views.
        reuse = self._dx if input_grad and sys.getrefcount(self._dx) == 2 else None
        opt = self.opt
        try:
            out = self._ext.mlp_step(  # type: ignore[union-attr]
                x,
                target,
                weights,
                biases,
                self.relu,
                self.kind,
                getattr(loss_fn, "label_smoothing", 0.0),
                input_grad,
                reuse,
                self._loss_slot(weights[0]),
                fuse,
                opt.lr if fuse else 0.0,  # type: ignore[union-attr]
                opt.weight_decay if fuse else 0.0,  # type: ignore[union-attr]
            )
        except (RuntimeError, ValueError, IndexError):
            # Bad input: let the readable path raise its clear, one-line error.
            return self._python(x, target, input_grad)
        if not fuse:
            grads = out[3:]
            for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
                gw, gb = grads[2 * i], grads[2 * i + 1]
                w.g = gw if w.g is None else w.g + gw
                if b is not None:
                    b.g = gb if b.g is None else b.g + gb
        if input_grad:
            self._dx = out[2]
        return out[0], out[1], out[2]

    def _loss_slot(self, like: Tensor) -> Tensor:
        """A 0-dim view into a block of ``_LOSS_SLOTS`` loss slots. Callers keep losses (a
        recorder keeps every step's), and one small tensor per step, allocated between the
        step's large ones, fragments the heap; one allocation per block avoids that. A kept
        loss keeps its block alive."""
        block, i = self._losses
        # (A plain int for the block's length and select() for the view: this runs every
        # step, and Tensor.__len__ and __getitem__ each cost microseconds of Python.)
        if block is None or i == _LOSS_SLOTS or block.dtype != like.dtype:
            block, i = torch.empty(_LOSS_SLOTS, dtype=like.dtype, device=like.device), 0
        self._losses = (block, i + 1)
        return block.select(0, i)

    def predict(self, x: Tensor) -> Tensor:
        """The model's output for ``x``, keeping no context (inference)."""
        if not self._usable():
            return self._predict_python(x)
        weights = [lin.weight for lin in self.linears]
        biases = [lin.bias for lin in self.linears]
        try:
            return self._ext.mlp_predict(x, weights, biases, self.relu)  # type: ignore[union-attr]
        except (RuntimeError, ValueError):
            return self._predict_python(x)  # raises the readable path's error for this input

    def _predict_python(self, x: Tensor) -> Tensor:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(x)
        finally:
            self.model.train(was)

    def _python(
        self, x: Tensor, target: Tensor, input_grad: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The readable path: what the C++ function computes, through the Module contract."""
        model, loss_fn = self.model, self.loss_fn
        if loss_fn is None:
            raise TypeError("FastStep(model) without a loss can only predict(x)")
        with torch.no_grad():
            preds = model(x)
            loss = loss_fn(preds, target)
            if not (model.training and loss_fn.training):
                return preds, loss, None
            dx = model.backward(loss_fn.backward()[0], need_input_grad=input_grad)
        return preds, loss, dx

    def __repr__(self) -> str:
        how = "compiled" if self.compiled else f"Python ({self.reason})"
        loss = type(self.loss_fn).__name__ if self.loss_fn is not None else "no loss"
        return f"FastStep({type(self.model).__name__}, {loss}, {how})"


__all__ = ["FastStep", "fast_path_status", "load_extension"]
