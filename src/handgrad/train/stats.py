"""Per-layer statistics of activations and gradients, recorded by hooks while a model trains.

For every hooked layer and every recorded training batch this keeps, for the layer's output
``y`` (the *activation*) and for ``dL/dy`` (the *gradient* arriving at that output during our
own ``bwd``, no autograd involved):

- ``mean`` and ``std`` of all elements;
- ``near_zero``: the fraction of elements with ``|v| < threshold``. The thresholds are absolute:
  ``act_zero=1e-3`` for activations (which a good init keeps at a scale of about 1, so this
  counts the zeros a ReLU produces) and ``grad_zero=1e-8`` for gradients (whose scale shrinks
  with the batch size of a mean loss; this counts, in practice, the exact zeros that an
  inactive ReLU sends back);
- ``hist``: a histogram with a fixed number of bins (40 by default), for the "colorful
  dimension" plots (one column per batch, one row per bin).

  Activations are binned linearly. The range is chosen per layer from the first recorded batch:
  ``[0, R]`` when that batch had no negative value (a ReLU's output), else ``[-R, R]``, with
  ``R`` four times the largest ``|y|`` seen, rounded up to 1, 2, 2.5 or 5 times a power of ten, so
  that later growth stays visible. Gradients span many orders of magnitude and their sign
  tells little, so they are binned by ``log10 |dL/dy|`` over a range chosen the same way:
  from 4 decades below the first batch's 1st percentile of the non-zero magnitudes up to 2
  decades above its largest. Exact zeros are left out of the gradient histogram (``near_zero``
  counts them). In both kinds, values beyond the range are counted in the outermost bins, so
  no element is lost and saturation shows as a bright edge.

The hooks count training batches themselves (every forward of the model in training mode is
one batch; evaluation-mode forwards are neither counted nor recorded) and record batch 0 and
every ``every``-th batch after it (default 10). Statistics stay on the tensors' device until
read, so recording never waits for the device. Recording a batch costs about a dozen
element-wise passes over each layer's output and gradient: for a small MLP on the CPU that is
as much as the training step itself, hence the default of one batch in ten
(``benchmarks/bench_stats.py`` measures it).

Use them with a :class:`~handgrad.train.learner.Learner` through the callbacks
:class:`ActivationStats` and :class:`GradientStats`, or on their own::

    with StatsHooks(model, every=10) as hooks:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            model.backward(loss_fn.backward()[0])
    hooks.activations["layers.1"].std        # (recorded batches,)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from handgrad.nn.layers import BatchNormReLU2d, Flatten, ReLU, Reshape
from handgrad.nn.module import HookHandle, Module
from handgrad.train.learner import Callback, Learner

BINS = 40
ACT_ZERO = 1e-3
GRAD_ZERO = 1e-8


@dataclass
class LayerStats:
    """The statistics of one layer's activations (or gradients) over the recorded batches.

    Attributes:
        name: the layer's dotted name in the model (``"layers.1"``).
        kind: its class name (``"ReLU"``).
        what: ``"activation"`` or ``"gradient"``.
        steps: (T,) int64, the training batch index of each record (0-based).
        mean, std, near_zero: (T,) float64.
        hist: (T, bins) float64 counts of elements per bin.
        edges: (bins + 1,) the bin edges: values, or ``log10 |v|`` when ``log_scale``.
        log_scale: the histogram bins ``log10 |v|`` (gradients) rather than ``v``.
        threshold: the ``near_zero`` threshold used.
        epoch_starts: the batch index at which each epoch after the first began (marked by
            the Learner callbacks; empty without them).
    """

    name: str
    kind: str
    what: str
    steps: Tensor
    mean: Tensor
    std: Tensor
    near_zero: Tensor
    hist: Tensor
    edges: Tensor
    log_scale: bool
    threshold: float
    epoch_starts: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """``"layers.1 (ReLU)"``: how plots name the layer."""
        return f"{self.name} ({self.kind})" if self.name else self.kind


@dataclass
class _Series:
    """What one hook accumulates: rows of (mean, std, near_zero) and histograms, on device."""

    kind: str
    steps: list[int] = field(default_factory=list)
    rows: list[Tensor] = field(default_factory=list)
    hists: list[Tensor] = field(default_factory=list)
    edges: Tensor | None = None


def nice_ceil(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 (times a power of ten) that is at least ``v`` (> 0)."""
    if not v > 0 or not math.isfinite(v):
        return 1.0
    base = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * base >= v * (1 - 1e-12):
            return m * base
    return 10.0 * base  # pragma: no cover (the loop always returns)


def activation_edges(x: Tensor, bins: int = BINS) -> Tensor:
    """Bin edges for a layer's activations, from its first recorded output ``x`` (see the
    module docstring): ``[0, R]`` or ``[-R, R]``, ``R = nice_ceil(4 max |x|)``: activations
    usually grow while a network trains, and this margin keeps them inside the range."""
    x = x.detach().float()
    r = nice_ceil(4.0 * float(x.abs().max())) if x.numel() else 1.0
    lo = 0.0 if x.numel() == 0 or float(x.min()) >= 0 else -r
    return torch.linspace(lo, r, bins + 1, dtype=torch.float64)


def gradient_edges(g: Tensor, bins: int = BINS) -> Tensor:
    """Bin edges over ``log10 |g|`` from a layer's first recorded gradient: from 4 decades
    below the 1st percentile of the non-zero magnitudes to 2 decades above the largest."""
    mag = g.detach().abs().flatten().float()
    mag = mag[mag > 0]
    if mag.numel() == 0:
        lo, hi = -10.0, 0.0
    else:
        k = max(1, math.ceil(0.01 * mag.numel()))
        lo = math.floor(math.log10(float(mag.kthvalue(k).values))) - 4.0
        hi = math.ceil(math.log10(float(mag.max()))) + 2.0
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)


def summarize(
    x: Tensor, edges: Tensor, *, threshold: float, log_scale: bool
) -> tuple[Tensor, Tensor]:
    """``(tensor([mean, std, near_zero]), hist)`` of all elements of ``x``.

    ``hist[i]`` counts the elements in ``[edges[i], edges[i+1])`` (the last bin is closed);
    values below or above the range count in the first or last bin; NaNs are not counted.
    With ``log_scale`` the binned value is ``log10 |x|`` and exact zeros are not counted.
    The edges must be evenly spaced (as :func:`activation_edges` and :func:`gradient_edges`
    make them).
    """
    flat = x.detach().flatten()  # (M,)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    n = max(flat.numel(), 1)
    # Two passes (mean, then the mean square of the deviations): as exact as torch.std and,
    # on the CPU, several times faster for the small tensors a hook sees every batch.
    mean = flat.sum() / n
    dev = flat - mean  # (M,)
    std = (dev.mul_(dev).sum() / n).sqrt()
    mag = flat.abs()
    near = (mag < threshold).sum().to(mean.dtype) / n
    bins = edges.numel() - 1
    lo, hi = float(edges[0]), float(edges[-1])
    v = mag.log10().masked_fill_(mag == 0, math.nan) if log_scale else flat
    # Bin index as torch.histc computes it, clamped so that the outermost bins also hold what
    # lies beyond the range; NaN (and, in log scale, zero) goes to an extra bin that is cut
    # off. bincount is several times faster than histc on the CPU.
    scale = bins / (hi - lo)
    idx = v.mul(scale).sub_(lo * scale).floor_().clamp_(0, bins - 1).nan_to_num_(nan=bins)
    hist = torch.bincount(idx.long(), minlength=bins + 1)[:bins].to(mean.dtype)  # (bins,)
    return torch.stack([mean, std, near]), hist


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


# ------------------------------------------------------------------------------ dead units
@dataclass
class DeadUnits:
    """Per ReLU layer: how many units (features, or channels of an image-shaped output) were
    never positive for any example. ``fraction = dead / units``."""

    name: str
    kind: str
    units: int
    dead: int

    @property
    def fraction(self) -> float:
        return self.dead / self.units if self.units else 0.0

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind})" if self.name else self.kind


def dead_units(
    model: Module,
    x: Tensor,
    *,
    batch_size: int = 1024,
    kinds: tuple[type[Module], ...] = (ReLU, BatchNormReLU2d),
) -> list[DeadUnits]:
    """Run ``model`` on every row of ``x`` (in eval mode, restoring the mode after) and report,
    for each module of a type in ``kinds``, the units whose output was ``<= 0`` for every row.

    A unit is an output feature of a (N, F) output, or a channel of a (N, C, ...) output
    (active if any of its positions is positive). A ReLU unit that is never active passes no
    gradient to its weights, so it cannot learn its way back: it is dead.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    active: dict[str, Tensor] = {}

    def make_hook(name: str) -> Any:
        def hook(module: Module, args: Any, out: Tensor) -> None:
            per_unit = out.detach() > 0  # (N, C, ...)
            per_unit = per_unit.flatten(2).any(2) if per_unit.ndim > 2 else per_unit  # (N, C)
            seen = per_unit.any(0)  # (C,)
            active[name] = seen if name not in active else active[name] | seen

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in targets]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            model(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [
        DeadUnits(n, type(m).__name__, int(active[n].numel()), int((~active[n]).sum()))
        for n, m in targets
        if n in active
    ]


def predict_logits(model: Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """``model``'s outputs for every row of ``x``, in eval mode (restored after), batch by
    batch: (N, C)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs)  # (N, C)
    finally:
        model.train(was_training)


def stats_summary(
    activations: dict[str, LayerStats] | None = None,
    gradients: dict[str, LayerStats] | None = None,
    dead: list[DeadUnits] | None = None,
) -> dict[str, Any]:
    """A JSON-able digest: each layer's statistics at its last recorded batch, and dead units
    (what ``stats.json`` holds for :mod:`handgrad.app.report`)."""
    activations, gradients = activations or {}, gradients or {}
    layers = []
    for name in dict.fromkeys([*activations, *gradients]):
        row: dict[str, Any] = {"name": name}
        for prefix, table in (("act", activations), ("grad", gradients)):
            if name in table:
                s = table[name]
                row["label"] = s.label
                row[f"{prefix}_mean"] = float(s.mean[-1])
                row[f"{prefix}_std"] = float(s.std[-1])
                row[f"{prefix}_near_zero"] = float(s.near_zero[-1])
                row[f"{prefix}_step"] = int(s.steps[-1])
        layers.append(row)
    out: dict[str, Any] = {"layers": layers}
    if dead is not None:
        out["dead_units"] = [
            {
                "name": d.name,
                "label": d.label,
                "units": d.units,
                "dead": d.dead,
                "fraction": d.fraction,
            }
            for d in dead
        ]
    return out
