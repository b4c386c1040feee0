"""Known causes of a wrong gradient, recognised from the numbers: a transpose, a scalar factor
(a missing ``1/N``), a sign, a sum not taken, an upstream gradient ignored."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from handgrad.check.usercode import UserCodeError

# Two tensors "match" for a diagnosis when they agree to this relative error: far looser than
# the check itself (a diagnosis names a likely cause; the verdict is made elsewhere).
_MATCH = 1e-6


def matches(a: Tensor, b: Tensor, tol: float = _MATCH) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(a.abs().max().item(), b.abs().max().item()) if a.numel() else 0.0
    return bool((a - b).abs().max().item() <= tol * scale) if scale > 0 else True


def shape_cause(hand: Tensor, right: Tensor) -> str | None:
    """Why a gradient of the wrong shape is wrong, where its numbers tell."""
    if hand.ndim == 2 and hand.t().shape == right.shape:
        if matches(hand.t(), right):
            return "looks transposed: its transpose is the right gradient"
        return "looks transposed (its transpose has the right shape)"
    if hand.ndim == right.ndim + 1 and hand.shape[1:] == right.shape:
        if matches(hand.sum(0), right):
            return "not summed over the batch: its sum over dim 0 is the right gradient"
        return "has an extra leading dim: not summed over the batch?"
    if hand.numel() == right.numel():
        return "right number of elements in the wrong shape: reshape it to the tensor's shape"
    return None


def value_cause(hand: Tensor, right: Tensor, sizes: dict[int, str]) -> str | None:
    """Why a gradient of the right shape is wrong: a transpose, a scalar factor, a sign.

    ``sizes`` maps sizes of the inputs' dimensions to a description, so that a factor equal
    to one of them is named (``N = 8, inp's dim 0``).
    """
    if hand.ndim == 2 and hand.shape[0] == hand.shape[1] > 1 and matches(hand.t(), right):
        return "looks transposed: its transpose is the right gradient"
    denom = (right * right).sum().item()
    if denom <= 0:
        return None
    c = (hand * right).sum().item() / denom
    if abs(c) < 1e-12 or not matches(hand, c * right, 1e-4):
        return None
    if abs(c + 1) < 1e-6:
        return "has the wrong sign: it is minus the right gradient"
    return f"off by a factor of {_factor(c, sizes)}"


def _factor(c: float, sizes: dict[int, str]) -> str:
    sign = "-" if c < 0 else ""
    a = abs(c)
    for value, prefix in ((a, ""), (1 / a, "1/")):
        n = round(value)
        if n >= 2 and abs(value - n) < 1e-6 * n:
            where = f" ({sizes[n]}: a missing or extra 1/{n}?)" if n in sizes else ""
            return f"{sign}{prefix}{n}{where}"
    return f"{c:.4g}"


def nonfinite_cause(hand: Tensor) -> str | None:
    bad = ~torch.isfinite(hand)
    n = int(bad.sum().item())
    if n == 0:
        return None
    kinds = [
        k
        for k, m in (("NaN", torch.isnan(hand)), ("Inf", torch.isinf(hand)))
        if bool(m.any().item())
    ]
    return (
        f"non-finite: {n} of {hand.numel()} elements are {'/'.join(kinds)} where the "
        "references are finite"
    )


def exception_hint(err: UserCodeError, kind: str) -> str | None:
    """A hint for the errors a habit from another framework causes."""
    line, msg = err.line or "", str(err.cause)
    if "+=" in line and ".g" in line:
        if isinstance(err.cause, TypeError) and "NoneType" in msg:
            return (
                "a parameter's .g is None inside bwd: assign it (w.g = ...), do not use +=; "
                "handgrad adds it to what the parameter already held"
            )
        if isinstance(err.cause, AttributeError) and "'g'" in msg:
            return (
                ".g does not exist before the backward sets it: assign it (w.g = ...), "
                "do not use +="
            )
    if kind == "module" and isinstance(err.cause, TypeError) and "bwd() takes" in msg:
        return "bwd's arguments are (out, *inputs): out first, then each input of forward"
    return None


_ACCUMULATE = re.compile(r"([A-Za-z_][\w.]*)\.g\s*\+=")


def accumulated_target(line: str) -> str | None:
    """``self.w`` for the line ``self.w.g += ...``: the tensor whose gradient it adds to."""
    found = _ACCUMULATE.search(line)
    return found.group(1) if found else None


def input_sizes(inputs: list[tuple[str, Tensor]]) -> dict[int, str]:
    """Sizes of the inputs' dimensions and element counts, described ("N = 8, inp's dim 0")."""
    sizes: dict[int, str] = {}
    for name, x in inputs:
        for d, n in enumerate(x.shape):
            if n >= 2:
                sizes.setdefault(n, f"{name}'s dim {d} is {n}")
        if x.numel() >= 2:
            sizes.setdefault(x.numel(), f"{name} has {x.numel()} elements")
    return sizes
