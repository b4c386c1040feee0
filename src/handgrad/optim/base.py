"""The optimizer base class: the parameter list, the learning rate, per-parameter state, saving.

Subclasses (:mod:`handgrad.optim.optimizers`) name their per-parameter buffers and apply one of
the update rules of :mod:`handgrad.optim.rules` to the parameters that have a gradient. State
is saved as flat tensors named ``state.<param index>.<buffer>`` plus a JSON-able ``meta`` dict,
which is what safetensors and a JSON sidecar store (see :meth:`Optimizer.state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor


# ----------------------------------------------------------------------------- validation
def check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
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
    ``_update(idx, params, grads)``, which applies one step to the parameters ``params`` (at
    positions ``idx`` of ``self.params``) with gradients ``grads``.

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

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = _check_params(params, type(self).__name__)
        self.lr = lr
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
        self._lr = check_number("learning rate", value)

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
        if any(p.requires_grad for p in params):  # e.g. torch.nn parameters: no graph, please
            with torch.no_grad():
                self._update(idx, params, grads)
        else:  # handgrad's parameters never record a graph: skip the context manager's cost
            self._update(idx, params, grads)

    def count_step(self) -> None:
        """Record one step applied to every parameter elsewhere (a fused update, as
        :class:`handgrad.fast.FastStep` does for SGD), so that ``step_count``,
        ``param_steps`` and a saved state stay what ``step()`` would have made them."""
        self.param_steps = [n + 1 for n in self.param_steps]
        self.step_count += 1

    def _update(self, idx: list[int], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def _buffers(self, name: str, idx: list[int]) -> list[Tensor]:
        """Buffer ``name`` of the parameters at ``idx``, created as zeros on their first step."""
        column = self.state[name]
        for i in idx:
            if column[i] is None:
                column[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
        return [column[i] for i in idx]  # type: ignore[misc]

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


__all__ = ["Optimizer"]
