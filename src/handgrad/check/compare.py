"""One tensor's verdict: the hand gradient against autograd and finite differences, in every
direction, with kinks left out and the cause named where the numbers show one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from handgrad.check.diagnose import input_sizes, matches, nonfinite_cause, shape_cause, value_cause
from handgrad.check.numeric import Evaluator, Numeric
from handgrad.check.report import CheckReport, TensorCheck

# Where the hand gradient disagrees with a reference at more elements than this outside the
# finite-difference sample, those elements are not examined for kinks (a bug, not a kink).
_KINK_PROBES = 32


@dataclass
class Tolerances:
    atol: float
    rtol: float
    numeric_atol: float
    numeric_rtol: float


@dataclass
class HandRun:
    """One hand-written forward + backward: its output and each tensor's gradient."""

    out: Tensor
    grads: dict[str, Any]
    returned: Any = None
    shape_errors: dict[str, Tensor] = field(default_factory=dict)


class Judge:
    """Compares each checked tensor's hand gradients with the references."""

    def __init__(
        self,
        tol: Tolerances,
        report: CheckReport,
        evaluator: Evaluator,
        names: list[str],
        xs: tuple[Any, ...],
        inputs: list[str],
        kind: str,
    ) -> None:
        self.tol, self.report, self.evaluator = tol, report, evaluator
        self.names, self.xs, self.inputs, self.kind = names, xs, inputs, kind

    def compare(
        self,
        name: str,
        runs: list[HandRun],
        auto: list[dict[str, Tensor | None]] | None,
        numeric: dict[str, Numeric],
    ) -> TensorCheck | None:
        shape = tuple(self.evaluator.tensor(name).shape)
        num = numeric[name]
        check = TensorCheck(name, shape, checked_elements=len(num.idx))
        hands = [r.grads.get(name) for r in runs]
        stopped = [n for r in runs for n in r.shape_errors]
        if stopped and name not in stopped:  # the backward was cut short: partial gradients
            self.report.notes.append(
                f"{name}: not compared (the backward stopped at {stopped[0]}'s shape error)"
            )
            return None
        unused = (
            all(a[name] is None for a in auto)
            if auto is not None
            else all(bool((c == 0).all()) for c in num.central)
        )
        if all(h is None for h in hands):
            if unused:
                self.report.notes.append(f"{name}: not read by forward (not checked)")
                return None
            check.problem = self._missing(name, runs)
            return check
        for h in hands:
            if h is None or not isinstance(h, Tensor):
                what = "nothing" if h is None else f"a {type(h).__name__}"
                check.problem = f"bwd set {what} for it in one of two calls, expected a tensor"
                return check
            if tuple(h.shape) != shape:
                right = auto[0][name] if auto is not None else None
                cause = shape_cause(h, right) if right is not None else None
                check.problem = (
                    f"bwd set a gradient of shape {tuple(h.shape)}, expected {shape}"
                    + (f": {cause}" if cause else "")
                )
                return check
        hands = [h.detach().to(torch.float64) for h in hands]
        refs: list[Tensor | None] = [None] * len(hands)
        if auto is not None:  # autograd says None for a tensor the output does not depend on
            zero = torch.zeros(shape, dtype=torch.float64)
            refs = [a[name] if a[name] is not None else zero for a in auto]
        for h in hands:
            cause = nonfinite_cause(h)
            if cause:
                check.problem = cause
                return check
        ignores = self.report.loss and ignores_dout(hands, refs, num)
        if ignores:
            # A loss ends the chain, where out.g = 1: judge it there, and say that it ignores
            # out.g (a verdict of its own: right as the last layer, wrong inside a chain).
            hands, refs = hands[:1], refs[:1]
            num = Numeric(num.idx, num.central[:1], num.plus[:1], num.minus[:1])
        excluded = self._kinks(name, hands, refs, num)
        check.excluded = len(excluded)
        if excluded:
            self.report.notes.append(
                f"{name}: {len(excluded)} element(s) at a non-differentiable point (the "
                "one-sided slopes differ, e.g. ReLU at 0) left out of the comparison"
            )
        keep = keep_mask(shape, excluded)
        use_auto = auto is not None and self._autograd_trusted(name, refs, num, keep)
        bad: set[str] = set()
        sel = [j for j, i in enumerate(num.idx) if keep.view(-1)[i]]
        a_err, n_err = [], []
        for k, h in enumerate(hands):
            if use_auto:
                ref = refs[k]
                assert ref is not None
                a_err.append(errors(h[keep], ref[keep]))
                if not (a_err[-1][0] <= self.tol.atol or a_err[-1][1] <= self.tol.rtol):
                    bad.add("autograd")
            hn = h.reshape(-1)[[num.idx[j] for j in sel]]
            n_err.append(errors(hn, num.central[k][sel]))
            if not (n_err[-1][0] <= self.tol.numeric_atol or n_err[-1][1] <= self.tol.numeric_rtol):
                bad.add("finite differences")
        if a_err:
            check.autograd_abs, check.autograd_rel = worst(a_err)
        check.numeric_abs, check.numeric_rel = worst(n_err)
        if bad:
            parts = []
            if "autograd" in bad:
                parts.append(f"autograd (rel {check.autograd_rel:.1e})")
            if "finite differences" in bad:
                parts.append(f"finite differences (rel {check.numeric_rel:.1e})")
            check.problem = "hand gradient differs from " + " and ".join(parts)
            cause = self._cause(name, hands, refs if use_auto else None, num)
            if cause:
                check.problem += f": {cause}"
            if ignores:
                check.problem += " (at out.g = 1; it also ignores out.g)"
        elif ignores and IGNORES_NOTE not in self.report.notes:
            self.report.notes.append(IGNORES_NOTE)
        return check

    def _missing(self, name: str, runs: list[HandRun]) -> str:
        msg = "bwd set no gradient for it"
        if name in self.inputs:
            i = self.names.index(name)
            returned = runs[0].returned if self.kind == "lesson" else None
            if isinstance(returned, Tensor) or (
                isinstance(returned, tuple) and any(isinstance(r, Tensor) for r in returned)
            ):
                return (
                    msg + "; backward returned a tensor instead: handgrad reads the gradient "
                    f"from {name}.g, so set {name}.g = ... (the autograd.Function habit)"
                )
            if i > 0:
                return (
                    msg + f"; if {name} is a target or a constant, declare it: "
                    f"no_grad=({name!r},) in gradcheck, --no-grad {name} on the command line, "
                    f"or no_grad_args = ({i},) on the class"
                )
            return msg
        return (
            msg + f"; if {name} is a constant, not a weight, declare it: no_grad=({name!r},) "
            f"in gradcheck, --no-grad {name} on the command line, or register_buffer"
        )

    def _kinks(
        self, name: str, hands: list[Tensor], refs: list[Tensor | None], num: Numeric
    ) -> set[int]:
        """Flat indices where the hand gradient disagrees with a reference because the
        function has a kink there: the one-sided slopes differ and the hand value lies between
        them (a valid subgradient)."""
        sampled = {i: j for j, i in enumerate(num.idx)}
        kinks: set[int] = set()
        probes = 0
        for k, h in enumerate(hands):
            hf = h.reshape(-1)
            scale = max(hf.abs().max().item(), num.central[k].abs().max().item(), 1e-300)
            tol = max(self.tol.numeric_atol, self.tol.numeric_rtol * scale)
            suspects = {
                i
                for j, i in enumerate(num.idx)
                if abs(hf[i].item() - num.central[k][j].item()) > tol
            }
            ref = refs[k]
            if ref is not None:
                rf = ref.reshape(-1)
                rscale = max(scale, rf.abs().max().item())
                far = (hf - rf).abs() > max(self.tol.atol, self.tol.rtol * rscale)
                suspects |= set(far.nonzero().view(-1).tolist()[: 4 * _KINK_PROBES])
            for i in sorted(suspects - kinks):
                if i in sampled:
                    j = sampled[i]
                    plus, minus = num.plus[k][j].item(), num.minus[k][j].item()
                elif probes < _KINK_PROBES:
                    probes += 1
                    _, plus, minus = self.evaluator.slopes(name, i)[k]
                else:
                    continue
                lo, hi = min(plus, minus), max(plus, minus)
                if hi - lo > max(100 * self.tol.numeric_atol, 1e-4 * scale) and (
                    lo - tol <= hf[i].item() <= hi + tol
                ):
                    kinks.add(i)
        return kinks

    def _autograd_trusted(
        self, name: str, refs: list[Tensor | None], num: Numeric, keep: Tensor
    ) -> bool:
        """Autograd is a reference only where it agrees with finite differences (a forward
        that detaches a path, or leaves torch, gives autograd a wrong graph)."""
        for k, ref in enumerate(refs):
            assert ref is not None
            sel = [j for j, i in enumerate(num.idx) if keep.view(-1)[i]]
            ra = ref.reshape(-1)[[num.idx[j] for j in sel]]
            n_abs, n_rel = errors(ra, num.central[k][sel])
            if not (n_abs <= self.tol.numeric_atol or n_rel <= self.tol.numeric_rtol):
                self.report.notes.append(
                    f"{name}: autograd disagrees with finite differences (rel {n_rel:.1e}): "
                    "the forward leaves autograd's graph somewhere (detach, numpy, no_grad); "
                    "checked against finite differences only"
                )
                return False
        return True

    def _cause(
        self, name: str, hands: list[Tensor], refs: list[Tensor | None] | None, num: Numeric
    ) -> str | None:
        if len(hands) > 1 and ignores_dout(hands, refs or [None, None], num):
            return (
                "bwd ignores out.g: it gives the same gradient for two different upstream "
                "gradients (multiply by out.g)"
            )
        if refs is None:
            if len(num.idx) != hands[0].numel():
                return None
            order = torch.tensor(num.idx).argsort()
            refs = [c[order].reshape(hands[0].shape) for c in num.central]
        r0 = refs[0]
        assert r0 is not None
        named = [(n, x) for n, x in zip(self.names, self.xs, strict=False) if isinstance(x, Tensor)]
        cause = value_cause(hands[0], r0, input_sizes(named))
        if cause:
            return cause
        far = (hands[0] - r0).abs() > max(self.tol.atol, self.tol.rtol * r0.abs().max().item())
        return f"wrong in {int(far.sum())} of {far.numel()} elements"


IGNORES_NOTE = (
    "ignores out.g: right as the last layer (dout = 1), wrong inside a chain "
    "(multiply by out.g to use it anywhere)"
)


def ignores_dout(hands: list[Tensor], refs: list[Tensor | None], num: Numeric) -> bool:
    """The same hand gradient for two upstream gradients whose right gradients differ."""
    if refs[0] is not None and refs[1] is not None:
        r0, r1 = refs[0], refs[1]
    else:
        r0, r1 = num.central[0], num.central[1]
    return matches(hands[0], hands[1], 1e-12) and not matches(r0, r1)


def keep_mask(shape: tuple[int, ...], excluded: set[int]) -> Tensor:
    keep = torch.ones(shape, dtype=torch.bool)
    if excluded:
        keep.view(-1)[list(excluded)] = False
    return keep


def errors(hand: Tensor, other: Tensor) -> tuple[float, float]:
    """(max |hand - other|, that divided by the larger of the two tensors' max magnitudes).
    NaN anywhere gives NaN, which no tolerance passes."""
    if hand.numel() == 0:
        return 0.0, 0.0
    diff = (hand - other).abs().max().item()
    scale = max(hand.abs().max().item(), other.abs().max().item())
    if math.isnan(diff) or math.isnan(scale):
        return math.nan, math.nan
    return diff, (diff / scale if scale > 0 else 0.0)


def worst(errors: list[tuple[float, float]]) -> tuple[float, float]:
    """The largest (abs, rel) pair of several directions; NaN wins."""
    out = []
    for column in zip(*errors, strict=True):
        out.append(math.nan if any(math.isnan(v) for v in column) else max(column))
    return out[0], out[1]
