"""The correctness guard: before timing, each handgrad variant and PyTorch take one step from
the same weights on the same batch (dropout off: the libraries cannot draw the same masks),
and the gradients, parameters, loss (or outputs, or input gradient) must agree. A variant
that does not is marked WRONG and gets no speed-up: a fast wrong answer is no result."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``max|a - b| <= GUARD_RTOL * max|b|`` for every tensor the guard compares.
GUARD_RTOL = 2e-4

#: Parameters after the step may differ beyond ``GUARD_RTOL`` in at most this fraction of
#: their elements: Adam's first step moves each weight by about ``lr * g / (|g| + eps)``, so
#: where a gradient is within float32 rounding of zero the two libraries legitimately step
#: differently. A wrong optimizer changes nearly every element; a wrong gradient is caught by
#: the gradients themselves, which are compared strictly.
GUARD_PARAM_FRACTION = 1e-3


@dataclass
class Guard:
    ok: bool
    error: float | None = None  # the worst max|a - b| / max|b| over the compared tensors
    detail: str = ""


def compare(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> Guard:
    """Every reference tensor must be present in ``ours`` and agree to ``GUARD_RTOL`` (relative
    to its largest element); updated parameters (``param:*``) may have a
    ``GUARD_PARAM_FRACTION`` of elements outside it."""
    if not ref:
        return Guard(True, None, "nothing to compare")
    worst, where = 0.0, ""
    for name, b in ref.items():
        a = ours.get(name)
        if a is None:
            return Guard(False, None, f"{name} missing")
        if a.shape != b.shape:
            return Guard(False, None, f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if not b.numel():
            continue
        # on the CPU in float64, whatever device the runs used (a GPU gives the same answer)
        a64 = a.detach().to("cpu", torch.float64).reshape(-1)
        b64 = b.detach().to("cpu", torch.float64).reshape(-1)
        scale = max(b64.abs().max().item(), 1e-12)
        diff = (a64 - b64).abs() / scale
        if not bool(torch.isfinite(a64).all()) or not bool(torch.isfinite(b64).all()):
            diff = torch.full_like(diff, math.inf)
        err = diff.max().item()
        skip = int(len(diff) * GUARD_PARAM_FRACTION)
        if name.startswith("param:") and math.isfinite(err) and skip:
            # the bulk: every element but the GUARD_PARAM_FRACTION largest differences
            k = len(diff) - skip
            err = diff.kthvalue(k).values.item()
        if err > worst or not where:
            worst, where = err, name
    ok = worst <= GUARD_RTOL
    return Guard(ok, worst, "" if ok else f"{where} differs by {worst:.1e} (relative)")
