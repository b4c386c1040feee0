"""The fast path: a training step of a multi-layer perceptron in one compiled call.

At small batches a training step of an MLP is a few dozen small kernels, and the Python
around each of them (the :class:`~handgrad.nn.module.Module` contract, argument parsing,
tensor wrappers) costs more than their arithmetic; each kernel is also one more pass over
memory. :class:`FastStep` runs the whole forward pass, the loss and the backward pass of a
supported model in one C++ function (``mlp_step.cpp``, built with
``torch.utils.cpp_extension`` on first use and cached), and leaves the gradients in ``param.g``
exactly as ``model.backward`` would. Given the optimizer too, a call is the whole training
step: the update runs inside the same call, one vectorised loop over each parameter and its
state right after the GEMM that produced its gradient, and no gradient is left behind (plain
SGD is folded into the weight's GEMM itself, ``W <- (1 - lr wd) W - lr h^T d``). A step is
then its GEMMs, the loss, one pass per activation forward and backward (the bias gradient is
summed in the backward's pass) and one per parameter. (benchmarks/RESULTS.md, "the fast path"
and "Fused fast path (issue 16)", has the measurements.)

The readable path stays the reference: the C++ code is the same math as
:mod:`handgrad.nn.functional` and :mod:`handgrad.optim.rules`, step for step, and tests/fast/
checks the weights, optimizer state and batch-norm statistics after several steps against it
(to 1e-10 in float64) for every supported activation, optimizer, dropout and batch norm. Where
the extension cannot be built (no compiler, no Python headers, ``HANDGRAD_FAST=0``) or the
model is not one it supports, :class:`FastStep` says so in one line on stderr, once, and runs
the readable Python path instead.

Supported (:mod:`handgrad.fast.plan`): a :class:`~handgrad.nn.module.Sequential`, no hooks, of
:class:`~handgrad.nn.layers.Linear` (with or without bias), the activations
:class:`~handgrad.nn.layers.ReLU`, :class:`~handgrad.nn.layers.LeakyReLU`,
:class:`~handgrad.nn.layers.GeneralRelu`, :class:`~handgrad.nn.layers.GELU` (exact and tanh),
:class:`~handgrad.nn.layers.SiLU`, :class:`~handgrad.nn.layers.Tanh`,
:class:`~handgrad.nn.layers.Sigmoid`, :class:`~handgrad.nn.layers.Dropout` (its masks drawn
from the layer's own random stream, in the readable forward pass's order: the same masks) and
:class:`~handgrad.nn.layers.BatchNorm1d` (with running statistics), in any order, with
:class:`~handgrad.nn.layers.losses.CrossEntropyLoss` (label smoothing too) or
:class:`~handgrad.nn.layers.losses.MSELoss`; fused updates for
:class:`~handgrad.optim.SGD` (momentum, Nesterov, weight decay), :class:`~handgrad.optim.Adam`
and :class:`~handgrad.optim.AdamW` over exactly the model's parameters. Not supported (the
readable path runs): Mish, Softmax, LayerNorm, convolutions, other losses and optimizers.

Example:
    >>> step = FastStep(model, loss_fn)
    >>> for xb, yb in train_dl:
    ...     preds, loss, _ = step(xb, yb)  # forward + backward, p.g filled
    ...     opt.step()
    ...     opt.zero_grad()
    >>> train = FastStep(model, loss_fn, AdamW(model.parameters(), lr=3e-3))
    >>> for xb, yb in train_dl:
    ...     preds, loss, _ = train(xb, yb)  # forward + backward + update; p.g stays None
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from handgrad._build import Build
from handgrad.fast.plan import DROPOUT as DROPOUT_KIND
from handgrad.fast.plan import LINEAR as LINEAR_KIND
from handgrad.fast.plan import make_plan
from handgrad.nn.module import Module
from handgrad.optim.optimizers import SGD, Adam, AdamW, Optimizer

_SOURCE = Path(__file__).with_name("mlp_step.cpp")
_NO_UPDATE, _SGD, _ADAM = 0, 1, 2  # mlp_step.cpp's optimizer codes
_FUSED = {SGD: _SGD, Adam: _ADAM, AdamW: _ADAM}
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
        # -O3 vectorises the element-wise loops; no FMA contraction, so each loop rounds as
        # the readable path's separate operations do; sqrt without errno, so it vectorises.
        extra_cflags=["-O3", "-ffp-contract=off", "-fno-math-errno"],
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


class FastStep:
    """Forward + loss + backward of ``model`` and ``loss_fn`` in one compiled call.

    ``step(x, target, input_grad=False)`` returns ``(preds, loss, dx)`` (``dx`` is ``None``
    unless ``input_grad``) and adds each parameter's gradient to ``p.g`` (``p.g`` is set when
    it was ``None``), as ``loss_fn.backward`` + ``model.backward`` would. Nothing is left
    pending on the modules. ``step.predict(x)`` is the forward pass alone (inference).

    With ``opt``, a call is a whole training step: it also updates the parameters and leaves
    no gradient behind (``p.g`` is ``None`` afterwards, as after ``opt.zero_grad()``).
    :class:`~handgrad.optim.SGD` (momentum, Nesterov, weight decay), :class:`~handgrad.optim.Adam`
    and :class:`~handgrad.optim.AdamW` over exactly the model's parameters are applied inside
    the compiled call, one loop per parameter right after its gradient's GEMM (``fused`` is
    then ``True``; plain SGD is folded into the weight's GEMM itself); any other optimizer
    runs its ``step()`` and ``zero_grad()`` after the compiled forward and backward. Gradients
    already in ``p.g`` (accumulated by the caller) are included either way (that call is then
    not fused). The optimizer's state, ``step_count`` and ``param_steps`` end up as its own
    ``step()`` leaves them.

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
        self.plan = make_plan(model, loss_fn)
        reason = self.plan.reason
        self._layers = list(getattr(model, "layers", ()))
        self._modules = [*model.modules(), *([loss_fn] if loss_fn is not None else [])]
        self._stateful = self.plan.stateful
        ext = load_extension() if not reason else None
        if not reason and ext is None:
            reason = str(_extension.failure)
        self._ext = ext
        self._dx: Tensor | None = None
        self._losses: tuple[Tensor | None, int] = (None, 0)
        self._grad_bufs: list[Tensor | None] = []
        self.compiled = not reason
        self.reason = reason
        if reason:
            _notice(reason)
        self._params = self.plan.params
        # The update can be fused when the optimizer trains exactly these parameters (its
        # hyperparameters are read at every call: a schedule or the user may change them).
        # _order[j]: the optimizer's index of the parameter in slot plan.slots[j].
        self._order: list[int] = []
        if opt is not None:
            index = {id(p): i for i, p in enumerate(opt.params)}
            if len(index) == len(self._params) and all(id(p) in index for p in self._params):
                self._order = [index[id(p)] for p in self._params]

    @property
    def fused(self) -> bool:
        """Whether the next call applies the optimizer inside the compiled call."""
        return self.compiled and bool(self._order) and type(self.opt) in _FUSED

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
        training = self.model.training and loss_fn.training
        if not (self._usable() and training and all(m.training for m in self._stateful)):
            out = self._python(x, target, input_grad)
        else:
            # Fuse the update only when this batch's gradient is the whole gradient.
            fuse = self.fused and all(p.g is None for p in self._params)  # type: ignore[attr-defined]
            out, done = self._compiled(x, target, input_grad, fuse)
            if done and fuse:  # updated in C++
                opt.count_step()  # type: ignore[union-attr]
                return out
        if opt is not None:
            opt.step()
            opt.zero_grad()
        return out

    def _update_args(self) -> tuple[int, list[float], list, list, list, list[float], list[float]]:
        """The optimizer's code, numbers, state buffers, gradient buffers and Adam's bias
        corrections, per parameter slot, for mlp_step.cpp (as optim/rules.py computes them)."""
        opt, plan = self.opt, self.plan
        kind = _FUSED[type(opt)]
        n_slots = 2 * len(plan.layers)
        s1: list[Tensor | None] = [None] * n_slots
        s2: list[Tensor | None] = [None] * n_slots
        steps, bc2s = [0.0] * n_slots, [1.0] * n_slots
        if len(self._grad_bufs) != n_slots:
            self._grad_bufs = [None] * n_slots
        if kind == _SGD:
            sgd: SGD = opt  # type: ignore[assignment]
            numbers = [sgd.lr, sgd.weight_decay, sgd.momentum, float(sgd.nesterov), 0, 0, 0, 0]
            bufs = sgd._buffers("momentum_buffer", self._order) if sgd.momentum != 0.0 else []
        else:
            adam: Adam = opt  # type: ignore[assignment]
            beta1, beta2 = adam.betas
            numbers = [adam.lr, adam.weight_decay, 0, 0, beta1, beta2, adam.eps, adam.decoupled]
            bufs = adam._buffers("exp_avg", self._order)
            bufs2 = adam._buffers("exp_avg_sq", self._order)
        for j, (slot, i, p) in enumerate(zip(plan.slots, self._order, self._params, strict=True)):
            if bufs:
                s1[slot] = bufs[j]
            if kind == _ADAM:
                s2[slot] = bufs2[j]
                t = opt.param_steps[i] + 1  # type: ignore[union-attr]
                steps[slot] = -adam.lr / (1.0 - beta1**t)
                bc2s[slot] = math.sqrt(1.0 - beta2**t)
            buf = self._grad_bufs[slot]
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                self._grad_bufs[slot] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return kind, [float(v) for v in numbers], s1, s2, self._grad_bufs, steps, bc2s

    def _compiled(
        self, x: Tensor, target: Tensor, input_grad: bool, fuse: bool
    ) -> tuple[tuple[Tensor, Tensor, Tensor | None], bool]:
        """The compiled step, and whether it ran (bad input goes down the readable path,
        which raises its clear error or leaves gradients for the optimizer's own step)."""
        plan = self.plan
        # Reuse the last input gradient's memory only if this object is its sole holder
        # (getrefcount sees our attribute and its own argument); C++ also checks for views.
        reuse = self._dx if input_grad and sys.getrefcount(self._dx) == 2 else None
        kind, numbers, s1, s2, bufs, steps, bc2s = (
            self._update_args() if fuse else (_NO_UPDATE, [], [], [], [], [], [])
        )
        fold = kind == _SGD and self.opt.momentum == 0.0  # type: ignore[union-attr]
        if DROPOUT_KIND in plan.kinds and (x.dim() != 2 or x.shape[1] != self._in_width(x)):
            return self._python(x, target, input_grad), False  # before drawing any mask
        try:
            out = self._ext.mlp_step(  # type: ignore[union-attr]
                x, target, plan.kinds, plan.fparams, plan.tensors(x.shape[0], x), plan.loss,
                getattr(self.loss_fn, "label_smoothing", 0.0), input_grad, reuse,
                self._loss_slot(self._params[0]), kind, numbers, s1, s2, bufs, steps, bc2s, fold,
            )  # fmt: skip
        except (RuntimeError, ValueError, IndexError):
            # Bad input: let the readable path raise its clear, one-line error.
            return self._python(x, target, input_grad), False
        plan.count_batches()
        if not fuse:
            grads = out[3:]
            for slot, p in zip(plan.slots, self._params, strict=True):
                g = grads[slot]
                p.g = g if p.g is None else p.g + g  # type: ignore[attr-defined]
        if input_grad:
            self._dx = out[2]
        return (out[0], out[1], out[2]), True

    def _in_width(self, x: Tensor) -> int:
        """The model's input width: the first Linear's (layers before it keep the width)."""
        first = self.plan.layers[self.plan.kinds.index(LINEAR_KIND)]
        return int(first.weight.shape[0])  # type: ignore[attr-defined]

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
        plan = self.plan
        try:
            return self._ext.mlp_predict(x, plan.kinds, plan.fparams, plan.eval_tensors())  # type: ignore[union-attr]
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
