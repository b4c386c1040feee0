"""Gradient checking: every hand-written gradient against autograd and finite differences.

``gradcheck(module, *inputs)`` runs, in float64 on a private copy of ``module``:

1. the hand-written pass: ``out = module(*inputs)``, then ``module.backward(dout)`` with a
   random upstream gradient ``dout`` (a random direction tests more than all-ones would);
2. PyTorch autograd through the same forward: ``torch.autograd.grad(out, tensors, dout)``;
3. central finite differences of the scalar ``f = sum(out * dout)``:
   ``df/dt_i ~ (f(t + eps e_i) - f(t - eps e_i)) / (2 eps)``, on every element of small tensors
   and on ``samples`` random elements of large ones (each element costs two forward passes).

For each tensor (each differentiable input and each parameter) it reports the largest absolute
difference and the same divided by the largest magnitude of the two gradients ("rel"), and
whether both comparisons pass. Autograd agrees with a correct hand gradient to round-off
(about 1e-15 in float64); finite differences agree to about 1e-8, so the default tolerances
leave a wide margin while a wrong formula (a missing factor, a transposed product) fails by
orders of magnitude.

Randomness in a layer (dropout) is made repeatable by re-seeding torch's global generator with
the same seed before every forward pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .module import Module

Reference = Callable[..., Tensor]


@dataclass
class TensorCheck:
    """One gradient's comparison. Errors are ``nan`` where a comparison could not be made."""

    name: str
    shape: tuple[int, ...]
    autograd_abs: float = math.nan
    autograd_rel: float = math.nan
    numeric_abs: float = math.nan
    numeric_rel: float = math.nan
    checked_elements: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class CheckReport:
    """Everything ``gradcheck`` found; ``ok`` is true when every tensor passed."""

    module: str
    tensors: list[TensorCheck] = field(default_factory=list)
    forward_error: float | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and all(t.ok for t in self.tensors)

    @property
    def failures(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.ok]

    def summary(self) -> str:
        """One line: OK, or which tensors are wrong and how."""
        if self.problem:
            return f"{self.module}: FAIL: {self.problem}"
        if self.ok:
            return f"{self.module}: OK ({len(self.tensors)} gradients)"
        wrong = "; ".join(f"{t.name}: {t.problem}" for t in self.failures)
        return f"{self.module}: FAIL: {wrong}"

    def __str__(self) -> str:
        head = (
            f"{'tensor':<24}{'shape':<18}{'autograd abs':>13}{'rel':>10}"
            f"{'numeric abs':>13}{'rel':>10}  ok"
        )
        lines = [self.module, head]
        for t in self.tensors:
            lines.append(
                f"{t.name:<24}{t.shape!s:<18}{t.autograd_abs:>13.2e}{t.autograd_rel:>10.1e}"
                f"{t.numeric_abs:>13.2e}{t.numeric_rel:>10.1e}  {'yes' if t.ok else 'NO'}"
            )
        lines.append(self.summary())
        return "\n".join(lines)


def _errors(hand: Tensor, other: Tensor) -> tuple[float, float]:
    """(max |hand - other|, that divided by the larger of the two tensors' max magnitudes)."""
    if hand.numel() == 0:
        return 0.0, 0.0
    diff = (hand - other).abs().max().item()
    scale = max(hand.abs().max().item(), other.abs().max().item())
    return diff, (diff / scale if scale > 0 else 0.0)


def _arg_names(module: Module, n: int) -> list[str]:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) < n or any(p.kind == p.VAR_POSITIONAL for p in params):
        return [f"input[{i}]" for i in range(n)]
    return names[:n]


def _as_tuple(grads: object, n: int) -> tuple[Tensor | None, ...]:
    return (grads,) if n == 1 else tuple(grads)  # type: ignore[arg-type]


def gradcheck(
    module: Module,
    *inputs: Tensor,
    reference: Reference | None = None,
    eps: float = 1e-6,
    samples: int = 24,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    numeric_atol: float = 1e-6,
    numeric_rtol: float = 1e-5,
    seed: int = 0,
) -> CheckReport:
    """Check ``module``'s hand-written gradients for ``inputs``; see the module docstring.

    Args:
        module: any :class:`Module`, built-in or a user's; it is copied, never changed.
        inputs: example arguments. Floating-point ones are differentiated unless the module
            lists their position in ``no_grad_args``; integer ones (labels) never are.
        reference: optional ``reference(module, *inputs) -> Tensor`` computing the forward
            with PyTorch, to check the forward's value too (``forward_error``).
        eps: finite-difference step.
        samples: at most this many elements of each tensor are checked numerically.
        atol, rtol: pass when hand vs autograd differ by at most ``atol`` or ``rtol`` relative.
        numeric_atol, numeric_rtol: the same for hand vs finite differences.
        seed: seeds ``dout``, the sampled elements and the global RNG before each forward.
    """
    # A check is thousands of tiny float64 operations: threads add only hand-off costs (with 2
    # threads on a busy 2-core machine the built-in cases ran 3x slower), so use one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gradcheck(
            module, inputs, reference, eps, samples, atol, rtol, numeric_atol, numeric_rtol, seed
        )
    finally:
        torch.set_num_threads(threads)


def _gradcheck(
    module: Module,
    inputs: tuple[Tensor, ...],
    reference: Reference | None,
    eps: float,
    samples: int,
    atol: float,
    rtol: float,
    numeric_atol: float,
    numeric_rtol: float,
    seed: int,
) -> CheckReport:
    label = module._label()
    report = CheckReport(label)
    gen = torch.Generator().manual_seed(seed)
    xs = tuple(x.detach().double().clone() if x.is_floating_point() else x for x in inputs)

    def run_forward(m: Module, args: Sequence[Tensor]) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return m(*args)

    hand_model = module.copy().double().train()
    hand_model.zero_grad()
    try:
        out = run_forward(hand_model, xs)
    except Exception as exc:  # a user's layer may raise anything: report it, do not crash
        report.problem = f"forward raised {type(exc).__name__}: {exc}"
        return report
    if not isinstance(out, Tensor) or not out.is_floating_point():
        report.problem = "forward must return one floating-point tensor"
        return report
    dout = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    diff_inputs = [
        i for i, x in enumerate(xs) if x.is_floating_point() and i not in module.no_grad_args
    ]
    try:
        hand_in = _as_tuple(hand_model.backward(dout), len(xs))
    except Exception as exc:
        report.problem = f"backward raised {type(exc).__name__}: {exc}"
        return report
    names = _arg_names(module, len(xs))
    hand: dict[str, Tensor | None] = {names[i]: hand_in[i] for i in diff_inputs}
    hand |= {n: p.g for n, p in hand_model.named_parameters()}

    if reference is not None:
        ref_model = module.copy().double().train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = reference(ref_model, *xs)
        report.forward_error = _errors(out.detach(), expected)[0]
        if not report.forward_error <= max(atol, rtol * expected.abs().max().item()):
            report.problem = f"forward differs from the reference by {report.forward_error:.2e}"

    auto = _autograd_grads(module, xs, diff_inputs, names, dout, run_forward)
    numeric = _numeric_grads(module, xs, diff_inputs, names, dout, run_forward, eps, samples, gen)

    for name, grad in hand.items():
        ref_auto = auto[name]
        idx, ref_num = numeric[name]
        shape = tuple(ref_auto.shape)
        check = TensorCheck(name, shape, checked_elements=idx.numel())
        report.tensors.append(check)
        if grad is None:
            check.problem = "bwd set no gradient for it"
            continue
        if tuple(grad.shape) != shape:
            check.problem = f"bwd set a gradient of shape {tuple(grad.shape)}, expected {shape}"
            continue
        check.autograd_abs, check.autograd_rel = _errors(grad, ref_auto)
        check.numeric_abs, check.numeric_rel = _errors(grad.reshape(-1)[idx], ref_num)
        bad = []
        if not (check.autograd_abs <= atol or check.autograd_rel <= rtol):
            bad.append(f"autograd (rel {check.autograd_rel:.1e})")
        if not (check.numeric_abs <= numeric_atol or check.numeric_rel <= numeric_rtol):
            bad.append(f"finite differences (rel {check.numeric_rel:.1e})")
        if bad:
            check.problem = "hand gradient differs from " + " and ".join(bad)
    return report


def _autograd_grads(
    module: Module,
    xs: tuple[Tensor, ...],
    diff_inputs: list[int],
    names: list[str],
    dout: Tensor,
    run_forward: Callable[[Module, Sequence[Tensor]], Tensor],
) -> dict[str, Tensor]:
    model = module.copy().double().train()
    args = list(xs)
    for i in diff_inputs:
        args[i] = xs[i].clone().requires_grad_(True)
    params = model.named_parameters()
    named = [(names[i], args[i]) for i in diff_inputs] + list(params)
    for _, t in named:
        t.requires_grad_(True)
    try:
        out = run_forward(model, args)
        grads = torch.autograd.grad(out, [t for _, t in named], dout, allow_unused=True)
    finally:
        model.clear_saved()
        for _, p in model.named_parameters():
            p.requires_grad_(False)
    return {
        n: (g if g is not None else torch.zeros_like(t)).detach()
        for (n, t), g in zip(named, grads, strict=True)
    }


def _numeric_grads(
    module: Module,
    xs: tuple[Tensor, ...],
    diff_inputs: list[int],
    names: list[str],
    dout: Tensor,
    run_forward: Callable[[Module, Sequence[Tensor]], Tensor],
    eps: float,
    samples: int,
    gen: torch.Generator,
) -> dict[str, tuple[Tensor, Tensor]]:
    model = module.copy().double().train()
    args = [x.clone().contiguous() if x.is_floating_point() else x for x in xs]
    targets = [(names[i], args[i]) for i in diff_inputs] + [
        (n, p.data) for n, p in model.named_parameters()
    ]

    def f() -> float:
        with torch.no_grad():
            value = (run_forward(model, args) * dout).sum().item()
        model.clear_saved()
        return value

    result: dict[str, tuple[Tensor, Tensor]] = {}
    for name, t in targets:
        flat = t.view(-1)
        n = flat.numel()
        idx = torch.arange(n) if n <= samples else torch.randperm(n, generator=gen)[:samples]
        est = torch.empty(idx.numel(), dtype=torch.float64)
        for k, i in enumerate(idx.tolist()):
            orig = flat[i].item()
            flat[i] = orig + eps
            up = f()
            flat[i] = orig - eps
            down = f()
            flat[i] = orig
            est[k] = (up - down) / (2 * eps)
        result[name] = (idx, est)
    return result
