"""Optimizers with hand-written update rules: SGD (momentum, Nesterov), Adam and AdamW.

Each optimizer reads the gradient a backward pass left in ``p.g`` and updates ``p`` in place.
The rule is written once, over *lists* of tensors, through a tiny set of list operations
(:class:`_ForeachOps`, :class:`_LoopOps`): by default they are PyTorch's ``torch._foreach_*``
kernels, which update every parameter in one call each (no Python per parameter, let alone per
element); where those are unavailable, the same rule runs as a plain loop over parameters. Both
give the same numbers, which the tests check against ``torch.optim`` step by step.

State is kept per parameter (momentum buffers, Adam's moments, the step count) and saved as flat
tensors named ``state.<param index>.<buffer>`` plus a JSON-able ``meta`` dict, which is what
safetensors and a JSON sidecar store (see :meth:`Optimizer.state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

Tensors = list[Tensor]


# ----------------------------------------------------------------- list operations, two ways
class _ForeachOps:
    """One kernel launch per operation for the whole parameter list (``torch._foreach_*``)."""

    @staticmethod
    def add(xs: Tensors, ys: Tensors, alpha: float) -> Tensors:
        return list(torch._foreach_add(xs, ys, alpha=alpha))

    @staticmethod
    def add_(xs: Tensors, ys: Tensors, alpha: float) -> None:
        torch._foreach_add_(xs, ys, alpha=alpha)

    @staticmethod
    def add_scalar_(xs: Tensors, value: float) -> None:
        torch._foreach_add_(xs, value)

    @staticmethod
    def mul_(xs: Tensors, value: float) -> None:
        torch._foreach_mul_(xs, value)

    @staticmethod
    def lerp_(xs: Tensors, ys: Tensors, weight: float) -> None:
        torch._foreach_lerp_(xs, ys, weight)

    @staticmethod
    def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None:
        torch._foreach_addcmul_(xs, ys, zs, value=value)

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return list(torch._foreach_sqrt(xs))

    @staticmethod
    def div_scalars_(xs: Tensors, values: list[float]) -> None:
        torch._foreach_div_(xs, values)

    @staticmethod
    def addcdiv_scalars_(xs: Tensors, ys: Tensors, zs: Tensors, values: list[float]) -> None:
        torch._foreach_addcdiv_(xs, ys, zs, values)

    @staticmethod
    def clone(xs: Tensors) -> Tensors:
        return [x.clone() for x in xs]


class _LoopOps:
    """The same operations as a Python loop over tensors (the fallback; identical numbers)."""

    @staticmethod
    def add(xs: Tensors, ys: Tensors, alpha: float) -> Tensors:
        return [x.add(y, alpha=alpha) for x, y in zip(xs, ys, strict=True)]

    @staticmethod
    def add_(xs: Tensors, ys: Tensors, alpha: float) -> None:
        for x, y in zip(xs, ys, strict=True):
            x.add_(y, alpha=alpha)

    @staticmethod
    def add_scalar_(xs: Tensors, value: float) -> None:
        for x in xs:
            x.add_(value)

    @staticmethod
    def mul_(xs: Tensors, value: float) -> None:
        for x in xs:
            x.mul_(value)

    @staticmethod
    def lerp_(xs: Tensors, ys: Tensors, weight: float) -> None:
        for x, y in zip(xs, ys, strict=True):
            x.lerp_(y, weight)

    @staticmethod
    def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None:
        for x, y, z in zip(xs, ys, zs, strict=True):
            x.addcmul_(y, z, value=value)

    @staticmethod
    def sqrt(xs: Tensors) -> Tensors:
        return [x.sqrt() for x in xs]

    @staticmethod
    def div_scalars_(xs: Tensors, values: list[float]) -> None:
        for x, v in zip(xs, values, strict=True):
            x.div_(v)

    @staticmethod
    def addcdiv_scalars_(xs: Tensors, ys: Tensors, zs: Tensors, values: list[float]) -> None:
        for x, y, z, v in zip(xs, ys, zs, values, strict=True):
            x.addcdiv_(y, z, value=v)

    @staticmethod
    def clone(xs: Tensors) -> Tensors:
        return [x.clone() for x in xs]


FOREACH_AVAILABLE = all(
    hasattr(torch, f"_foreach_{op}")
    for op in ("add", "add_", "mul_", "lerp_", "addcmul_", "sqrt", "div_", "addcdiv_")
)


# ----------------------------------------------------------------------------- validation
def _check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    """``value`` as a float in [low, high) (``high`` open), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and low <= value < high):
        bounds = f"[{low:g}, {high:g})" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"invalid {name}: {value!r} (must be {bounds})")
    return value


def _check_params(params: Iterable[Tensor], who: str) -> list[Tensor]:
    if isinstance(params, Tensor) or hasattr(params, "named_parameters"):
        raise TypeError(
            f"{who}: params must be an iterable of tensors, e.g. model.parameters(), "
            f"got {type(params).__name__}"
        )
    params = list(params)
    if not params:
        raise ValueError(f"{who}: got an empty parameter list; pass model.parameters()")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: params[{i}] is {type(p).__name__}, not a tensor")
        if not p.is_floating_point():
            raise ValueError(f"{who}: params[{i}] has dtype {p.dtype}; only floating point trains")
        if id(p) in seen:
            raise ValueError(f"{who}: params[{i}] appears twice in the parameter list")
        seen.add(id(p))
    return params


# ----------------------------------------------------------------------------- the base class
class Optimizer:
    """Base class: the parameter list, the learning rate, per-parameter state, saving.

    Subclasses set ``state_names`` (the per-parameter buffers) and implement
    ``_update(idx, params, grads, ops)``, which applies one step to the parameters ``params``
    (at positions ``idx`` of ``self.params``) with gradients ``grads``.

    Attributes:
        params: the tensors being trained, in the order given.
        lr: the learning rate; a schedule may set it before any step.
        step_count: how many times :meth:`step` ran (with at least one gradient).
        state: ``state[name][i]`` is buffer ``name`` of parameter ``i`` (``None`` until that
            parameter first receives a gradient).
        param_steps: ``param_steps[i]`` is how many updates parameter ``i`` received (Adam's
            bias correction uses it, as ``torch.optim`` does).
    """

    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Iterable[Tensor], lr: float, *, foreach: bool | None) -> None:
        who = type(self).__name__
        self.params = _check_params(params, who)
        self.lr = lr
        if foreach and not FOREACH_AVAILABLE:
            raise ValueError(f"{who}: foreach=True but this torch lacks torch._foreach_* ops")
        self.foreach = FOREACH_AVAILABLE if foreach is None else bool(foreach)
        self.step_count = 0
        self.param_steps = [0] * len(self.params)
        self.state: dict[str, list[Tensor | None]] = {
            name: [None] * len(self.params) for name in self.state_names
        }

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_number("learning rate", value)

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters, JSON-able (tuples become lists when saved)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- stepping
    def zero_grad(self) -> None:
        """Forget every gradient (``p.g = None``); the next backward pass fills them anew."""
        for p in self.params:
            p.g = None  # type: ignore[attr-defined]

    def step(self) -> None:
        """Update every parameter that has a gradient in ``.g``; the others are left alone."""
        idx, params, grads = [], [], []
        for i, p in enumerate(self.params):
            g = getattr(p, "g", None)
            if g is not None:
                idx.append(i)
                params.append(p)
                grads.append(g)
        if not idx:
            return
        for i in idx:
            self.param_steps[i] += 1
        self.step_count += 1
        ops = _ForeachOps if self.foreach else _LoopOps
        if any(p.requires_grad for p in params):  # e.g. torch.nn parameters: no graph, please
            with torch.no_grad():
                self._update(idx, params, grads, ops)
        else:  # handgrad's parameters never record a graph: skip the context manager's cost
            self._update(idx, params, grads, ops)

    def count_step(self) -> None:
        """Record one step applied to every parameter elsewhere (a fused update, as
        :class:`handgrad.fast.FastStep` does for SGD), so that ``step_count``,
        ``param_steps`` and a saved state stay what ``step()`` would have made them."""
        self.param_steps = [n + 1 for n in self.param_steps]
        self.step_count += 1

    def _update(self, idx: list[int], params: Tensors, grads: Tensors, ops: Any) -> None:
        raise NotImplementedError

    def _buffers(self, name: str, idx: list[int]) -> list[Tensor | None]:
        column = self.state[name]
        return [column[i] for i in idx]

    # ----------------------------------------------------------------------------- saving
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, meta)``: flat, safetensors-ready tensors and JSON-able metadata.

        ``tensors["state.<i>.<name>"]`` is buffer ``name`` of parameter ``i`` (a contiguous
        copy that shares no memory). ``meta`` holds the optimizer's type, hyperparameters,
        ``step_count``, ``param_steps`` and the parameters' shapes, for checking on load.
        """
        tensors = {
            f"state.{i}.{name}": buf.detach().clone().contiguous()
            for name, column in self.state.items()
            for i, buf in enumerate(column)
            if buf is not None
        }
        meta = {
            "type": type(self).__name__,
            "hyperparameters": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.hyperparameters().items()
            },
            "step_count": self.step_count,
            "param_steps": list(self.param_steps),
            "param_shapes": [list(p.shape) for p in self.params],
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (hyperparameters included, as torch does).

        Raises ``ValueError`` naming the mismatch when the state belongs to another optimizer
        type, another number or shape of parameters, or lacks / adds buffers. Nothing is
        changed unless everything fits.
        """
        who = type(self).__name__
        if not isinstance(meta, dict) or "type" not in meta:
            raise ValueError(f"{who}.load_state_dict: meta is not an optimizer state (no 'type')")
        if meta["type"] != who:
            raise ValueError(f"{who}.load_state_dict: the state was saved by {meta['type']}")
        shapes = [list(p.shape) for p in self.params]
        saved_shapes = meta.get("param_shapes")
        if saved_shapes is None or len(saved_shapes) != len(shapes):
            n = "?" if saved_shapes is None else len(saved_shapes)
            raise ValueError(
                f"{who}.load_state_dict: the state has {n} parameters, this optimizer "
                f"{len(shapes)}; build the same model before loading"
            )
        for i, (a, b) in enumerate(zip(saved_shapes, shapes, strict=True)):
            if list(a) != b:
                raise ValueError(
                    f"{who}.load_state_dict: parameter {i} was {tuple(a)} when saved, "
                    f"is {tuple(b)} now"
                )
        param_steps = [int(s) for s in meta.get("param_steps", [])]
        if len(param_steps) != len(shapes):
            raise ValueError(f"{who}.load_state_dict: meta['param_steps'] has the wrong length")
        expected = {
            f"state.{i}.{name}"
            for name in self.state_names
            for i, s in enumerate(param_steps)
            if s > 0 and self._has_buffer(name)
        }
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{who}.load_state_dict: tensors do not match the saved steps: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        new_state: dict[str, list[Tensor | None]] = {
            name: [None] * len(self.params) for name in self.state_names
        }
        for key, value in tensors.items():
            _, i_str, name = key.split(".", 2)
            p = self.params[int(i_str)]
            if value.shape != p.shape:
                raise ValueError(
                    f"{who}.load_state_dict: {key} has shape {tuple(value.shape)}, the "
                    f"parameter {tuple(p.shape)}"
                )
            new_state[name][int(i_str)] = value.detach().to(p.device, p.dtype, copy=True)
        hyper = dict(meta.get("hyperparameters", {}))
        self._set_hyperparameters(hyper)  # validates; raises before anything changes below
        self.state = new_state
        self.param_steps = param_steps
        self.step_count = int(meta.get("step_count", 0))

    def _has_buffer(self, name: str) -> bool:
        """Whether buffer ``name`` exists once a parameter has stepped (SGD without momentum
        keeps none)."""
        return True

    def _set_hyperparameters(self, hyper: dict[str, Any]) -> None:
        """Re-run the constructor's checks on saved hyperparameters and apply them."""
        who = type(self).__name__
        names = set(self.hyperparameters())
        if set(hyper) != names:
            raise ValueError(
                f"{who}.load_state_dict: saved hyperparameters {sorted(hyper)} differ from "
                f"{who}'s {sorted(names)}"
            )
        fresh = type(self)([torch.zeros(1)], **_as_kwargs(hyper))  # validates every value
        for name in names:
            setattr(self, name, getattr(fresh, name))

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} tensors, {hp})"


def _as_kwargs(hyper: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}


# ----------------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov momentum and L2 decay.

    The algorithm (``torch.optim.SGD`` with ``dampening=0``), for each parameter ``p`` with a
    gradient ``g = p.g``:

    .. code-block:: text

        if weight_decay != 0:   g = g + weight_decay * p
        if momentum != 0:
            if first step:      b = g                          (the buffer starts at g)
            else:               b = momentum * b + g
            if nesterov:        g = g + momentum * b           (look ahead along b)
            else:               g = b
        p = p - lr * g

    Args:
        params: the tensors to train (``model.parameters()``).
        lr: learning rate (>= 0).
        momentum: momentum factor in [0, 1) (default 0: plain SGD).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.
        foreach: ``None`` (default) uses ``torch._foreach_*`` when available; ``False`` forces
            the per-parameter loop.

    Example:
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> ...; model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
    """

    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        self.momentum = _check_number("momentum", momentum, high=1.0)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = nesterov
        super().__init__(params, lr, foreach=foreach)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _has_buffer(self, name: str) -> bool:
        return self.momentum != 0.0

    def _update(self, idx: list[int], params: Tensors, grads: Tensors, ops: Any) -> None:
        if self.weight_decay != 0.0:
            grads = ops.add(grads, params, alpha=self.weight_decay)  # new tensors: p.g is kept
        if self.momentum != 0.0:
            bufs = self._buffers("momentum_buffer", idx)
            if any(b is None for b in bufs):
                self._start_buffers(idx, bufs, grads, ops)
            else:
                ops.mul_(bufs, self.momentum)
                ops.add_(bufs, grads, alpha=1.0)
            # Nesterov looks ahead: g + momentum * b; classical momentum steps along b itself.
            grads = ops.add(grads, bufs, alpha=self.momentum) if self.nesterov else bufs
        ops.add_(params, grads, alpha=-self.lr)

    def _start_buffers(
        self, idx: list[int], bufs: list[Tensor | None], grads: Tensors, ops: Any
    ) -> None:
        """First step of some parameters: their buffer starts as a copy of the gradient; the
        others follow the usual rule."""
        column = self.state["momentum_buffer"]
        old = [k for k, b in enumerate(bufs) if b is not None]
        if old:
            old_bufs = [bufs[k] for k in old]
            ops.mul_(old_bufs, self.momentum)
            ops.add_(old_bufs, [grads[k] for k in old], alpha=1.0)
        for k, b in enumerate(bufs):
            if b is None:
                bufs[k] = column[idx[k]] = grads[k].detach().clone()


# ---------------------------------------------------------------------------------- Adam
class Adam(Optimizer):
    r"""Adam: per-coordinate steps from running averages of the gradient and its square.

    The algorithm (``torch.optim.Adam``, ``amsgrad=False``), for each parameter ``p`` with a
    gradient ``g = p.g`` at its ``t``-th update (``t`` = 1, 2, ...):

    .. code-block:: text

        if decoupled (AdamW):    p = p * (1 - lr * weight_decay)
        elif weight_decay != 0:  g = g + weight_decay * p        (L2, through the moments)
        m = beta1 * m + (1 - beta1) * g                          (m, v start at 0)
        v = beta2 * v + (1 - beta2) * g^2
        m_hat = m / (1 - beta1^t)                                (bias corrections)
        v_hat = v / (1 - beta2^t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    As in PyTorch the last line is evaluated as ``p - (lr / (1 - beta1^t)) * m /
    (sqrt(v) / sqrt(1 - beta2^t) + eps)``, and ``m`` is updated with ``lerp``.

    Args:
        params: the tensors to train (``model.parameters()``).
        lr: learning rate (>= 0), default 1e-3.
        betas: ``(beta1, beta2)``, each in [0, 1), default (0.9, 0.999).
        eps: added to the denominator (>= 0), default 1e-8.
        weight_decay: L2 penalty added to the gradient (>= 0), default 0.
        foreach: ``None`` (default) uses ``torch._foreach_*`` when available.

    Example:
        >>> opt = Adam(model.parameters(), lr=3e-3)
    """

    state_names = ("exp_avg", "exp_avg_sq")
    decoupled: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        *,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (
            _check_number("beta1 (betas[0])", betas[0], high=1.0),
            _check_number("beta2 (betas[1])", betas[1], high=1.0),
        )
        self.eps = _check_number("eps", eps)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        super().__init__(params, lr, foreach=foreach)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, idx: list[int], params: Tensors, grads: Tensors, ops: Any) -> None:
        beta1, beta2 = self.betas
        lr, wd = self.lr, self.weight_decay
        if wd != 0.0:
            if self.decoupled:
                ops.mul_(params, 1.0 - lr * wd)
            else:
                grads = ops.add(grads, params, alpha=wd)  # new tensors: p.g is kept
        exp_avgs = self._moments("exp_avg", idx, params)
        exp_avg_sqs = self._moments("exp_avg_sq", idx, params)
        ops.lerp_(exp_avgs, grads, 1.0 - beta1)  # m + (1 - beta1)(g - m)
        ops.mul_(exp_avg_sqs, beta2)
        ops.addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)

        steps = [self.param_steps[i] for i in idx]
        neg_step_sizes = [-lr / (1.0 - beta1**t) for t in steps]
        bias_correction2_sqrts = [math.sqrt(1.0 - beta2**t) for t in steps]
        denom = ops.sqrt(exp_avg_sqs)
        ops.div_scalars_(denom, bias_correction2_sqrts)
        ops.add_scalar_(denom, self.eps)
        ops.addcdiv_scalars_(params, exp_avgs, denom, neg_step_sizes)

    def _moments(self, name: str, idx: list[int], params: Tensors) -> Tensors:
        """The buffers ``name`` of ``params``, created as zeros on a parameter's first step."""
        column = self.state[name]
        out = []
        for i, p in zip(idx, params, strict=True):
            buf = column[i]
            if buf is None:
                buf = column[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(buf)
        return out


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter): the decay shrinks the weights
    directly, ``p = p * (1 - lr * weight_decay)``, instead of entering the gradient's moments.

    The algorithm is :class:`Adam`'s with the ``decoupled`` branch (``torch.optim.AdamW``):

    .. code-block:: text

        p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Args:
        params, lr, betas, eps, foreach: as for :class:`Adam`.
        weight_decay: decoupled decay coefficient (>= 0), default 1e-2.
    """

    decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        *,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach
        )


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer"]
