"""The hooks that record per-layer statistics while a model trains, and the Learner callbacks
that install them (:class:`ActivationStats`, :class:`GradientStats`)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from handgrad.nn.layers import Flatten, Reshape
from handgrad.nn.module import HookHandle, Module
from handgrad.train.learner import Callback, Learner
from handgrad.train.stats.histograms import (
    ACT_ZERO,
    BINS,
    GRAD_ZERO,
    LayerStats,
    _Series,
    activation_edges,
    gradient_edges,
    summarize,
)


def _leaf_modules(model: Module) -> list[tuple[str, Module]]:
    """Modules without sub-modules, in model order (the model itself if it has none), except
    reshapes, whose output holds the same numbers as their input."""
    leaves = [
        (n, m)
        for n, m in model.named_modules()
        if not list(m._children()) and not isinstance(m, Reshape | Flatten)
    ]
    return leaves or [("", model)]


class StatsHooks:
    """Hooks that record per-layer statistics of activations and/or gradients.

    Args:
        model: the model; its training-mode forward calls are counted as batches.
        every: record batch 0 and every ``every``-th training batch after it (default 10).
        activations: record the output of each hooked layer.
        gradients: record the gradient of the loss with respect to that output.
        modules: the layers to hook as ``(name, module)`` pairs or modules (default: every
            module without sub-modules, in model order, but reshapes).
        bins: histogram bins.
        act_zero, grad_zero: the ``near_zero`` thresholds (absolute; see the module docs).

    Use as a context manager, or call :meth:`remove` when done; the statistics stay readable in
    :attr:`activations` and :attr:`gradients` (``dict[name, LayerStats]`` in model order).
    """

    def __init__(
        self,
        model: Module,
        *,
        every: int = 10,
        activations: bool = True,
        gradients: bool = True,
        modules: Iterable[Module | tuple[str, Module]] | None = None,
        bins: int = BINS,
        act_zero: float = ACT_ZERO,
        grad_zero: float = GRAD_ZERO,
    ) -> None:
        if every < 1:
            raise ValueError(f"StatsHooks: every must be >= 1, got {every}")
        if bins < 1:
            raise ValueError(f"StatsHooks: bins must be >= 1, got {bins}")
        self.model, self.every, self.bins = model, every, bins
        self.act_zero, self.grad_zero = act_zero, grad_zero
        self.layers = self._resolve(model, modules)
        self.batches = 0  # training batches seen (forwards of the model in training mode)
        self.epoch_starts: list[int] = []  # filled by mark_epoch()
        self._fwd_on = True  # record the batch whose forward is running now
        self._bwd_on = False  # record the batch whose backward is running now
        self._bwd_step = 0
        self._act: dict[str, _Series] = {}
        self._grad: dict[str, _Series] = {}
        self._handles: list[HookHandle] = []
        for name, m in self.layers:
            if activations:
                self._act[name] = _Series(type(m).__name__)
                self._handles.append(m.register_forward_hook(self._forward_hook(name)))
            if gradients:
                self._grad[name] = _Series(type(m).__name__)
                self._handles.append(m.register_backward_hook(self._backward_hook(name)))
        # Registered last, so that on a one-layer model the layer's own hooks run first.
        self._handles.append(model.register_forward_hook(self._count))

    @staticmethod
    def _resolve(
        model: Module, modules: Iterable[Module | tuple[str, Module]] | None
    ) -> list[tuple[str, Module]]:
        if modules is None:
            return _leaf_modules(model)
        names = {id(m): n for n, m in model.named_modules()}
        out = []
        for item in modules:
            name, m = item if isinstance(item, tuple) else (names.get(id(item)), item)
            if not isinstance(m, Module):
                raise TypeError(f"StatsHooks: {m!r} is not a handgrad Module")
            out.append((name if name is not None else f"{type(m).__name__}{len(out)}", m))
        return out

    # ----------------------------------------------------------------------------- the hooks
    def _count(self, model: Module, args: Any, out: Any) -> None:
        if not model.training:
            return
        self._bwd_on, self._bwd_step = self._fwd_on, self.batches
        self.batches += 1
        self._fwd_on = self.batches % self.every == 0

    def _forward_hook(self, name: str) -> Any:
        def hook(module: Module, args: Any, out: Any) -> None:
            if self._fwd_on and self.model.training and _is_float_tensor(out):
                self._record(self._act[name], out, self.batches, log_scale=False)

        return hook

    def _backward_hook(self, name: str) -> Any:
        def hook(module: Module, dout: Tensor, grads: Any) -> None:
            if self._bwd_on and _is_float_tensor(dout):
                self._record(self._grad[name], dout, self._bwd_step, log_scale=True)

        return hook

    def _record(self, series: _Series, x: Tensor, step: int, *, log_scale: bool) -> None:
        if series.edges is None:
            series.edges = (gradient_edges if log_scale else activation_edges)(x, self.bins)
        row, hist = summarize(
            x,
            series.edges,
            threshold=self.grad_zero if log_scale else self.act_zero,
            log_scale=log_scale,
        )
        series.steps.append(step)
        series.rows.append(row)
        series.hists.append(hist)

    def mark_epoch(self) -> None:
        """Note that a new epoch starts at the next training batch (plots draw a line there)."""
        if self.batches and (not self.epoch_starts or self.epoch_starts[-1] != self.batches):
            self.epoch_starts.append(self.batches)

    # --------------------------------------------------------------------------- the results
    @property
    def activations(self) -> dict[str, LayerStats]:
        """Statistics of each hooked layer's output, by layer name, in model order."""
        return self._collect(self._act, "activation", log_scale=False)

    @property
    def gradients(self) -> dict[str, LayerStats]:
        """Statistics of the gradient arriving at each hooked layer's output."""
        return self._collect(self._grad, "gradient", log_scale=True)

    def _collect(
        self, table: dict[str, _Series], what: str, *, log_scale: bool
    ) -> dict[str, LayerStats]:
        out = {}
        for name, s in table.items():
            if not s.rows or s.edges is None:
                continue
            rows = torch.stack(s.rows).to("cpu", torch.float64)  # (T, 3)
            out[name] = LayerStats(
                name=name,
                kind=s.kind,
                what=what,
                steps=torch.tensor(s.steps, dtype=torch.int64),
                mean=rows[:, 0],
                std=rows[:, 1],
                near_zero=rows[:, 2],
                hist=torch.stack(s.hists).to("cpu", torch.float64),  # (T, bins)
                edges=s.edges,
                log_scale=log_scale,
                threshold=self.grad_zero if log_scale else self.act_zero,
                epoch_starts=tuple(self.epoch_starts),
            )
        return out

    def remove(self) -> None:
        """Detach every hook (the statistics recorded so far stay readable)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> StatsHooks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point() and x.numel() > 0


# ------------------------------------------------------------------------- Learner callbacks
class _StatsCallback(Callback):
    """Registers :class:`StatsHooks` on ``learn.model`` for the fit, removes them after."""

    order = 0
    _activations = False
    _gradients = False

    def __init__(
        self,
        every: int = 10,
        *,
        modules: Iterable[Module | tuple[str, Module]] | None = None,
        bins: int = BINS,
        act_zero: float = ACT_ZERO,
        grad_zero: float = GRAD_ZERO,
    ) -> None:
        if every < 1:
            raise ValueError(f"{type(self).__name__}: every must be >= 1, got {every}")
        self.every, self.modules, self.bins = every, modules, bins
        self.act_zero, self.grad_zero = act_zero, grad_zero
        self.hooks: StatsHooks | None = None

    def before_fit(self, learn: Learner) -> None:
        self.hooks = StatsHooks(
            learn.model,
            every=self.every,
            activations=self._activations,
            gradients=self._gradients,
            modules=self.modules,
            bins=self.bins,
            act_zero=self.act_zero,
            grad_zero=self.grad_zero,
        )

    def before_epoch(self, learn: Learner) -> None:
        if learn.training and self.hooks is not None:
            self.hooks.mark_epoch()

    def after_fit(self, learn: Learner) -> None:
        if self.hooks is not None:
            self.hooks.remove()

    def _stats(self, what: str) -> dict[str, LayerStats]:
        if self.hooks is None:
            raise RuntimeError(f"{type(self).__name__}: nothing recorded yet (run learn.fit)")
        return getattr(self.hooks, what)


class ActivationStats(_StatsCallback):
    """Learner callback: per-layer statistics of activations every ``every`` training batches
    (see :class:`StatsHooks`); read them as ``cb.stats`` (``dict[name, LayerStats]``)."""

    _activations = True

    @property
    def stats(self) -> dict[str, LayerStats]:
        return self._stats("activations")


class GradientStats(_StatsCallback):
    """Learner callback: per-layer statistics of the gradients arriving at each layer's
    output, from handgrad's own backward, every ``every`` training batches."""

    _gradients = True

    @property
    def stats(self) -> dict[str, LayerStats]:
        return self._stats("gradients")
