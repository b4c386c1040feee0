"""Dead ReLU units (never positive for any example), a model's logits over a whole set, and the
JSON digest of a run's statistics that the report reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from handgrad.nn.layers import BatchNormReLU2d, ReLU
from handgrad.nn.module import Module
from handgrad.train.stats.histograms import LayerStats


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
