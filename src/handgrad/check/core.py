"""``gradcheck``: every hand-written gradient against autograd and central finite differences.

(Over 400 lines on purpose: one check's steps share its state, the copies, the upstream
gradients and the names, and read best in order; finite differences, the per-tensor verdict
and the diagnoses are modules of their own.)

For a layer and example inputs, in float64, on private copies of both:

1. **the hand-written pass**, twice, each time on a fresh copy: ``out = layer(*inputs)``, then
   the layer's backward with an upstream gradient ``dout``. The two ``dout`` are independent
   random directions drawn from a stream of their own (never the inputs' stream: a ``dout``
   equal to the input makes ``x^T @ dout`` symmetric, and a transposed weight gradient would
   pass). A layer whose output is a scalar is a loss: its first ``dout`` is 1.
2. **autograd** through the same forward: ``torch.autograd.grad(out, tensors, dout)``.
3. **central finite differences** of ``f = sum(out * dout)``:
   ``df/dt_i ~ (f(t + eps e_i) - f(t - eps e_i)) / (2 eps)`` on every element of small tensors
   and ``samples`` random elements of large ones. The two one-sided slopes come for free; where
   they differ the element sits on a kink (ReLU at 0) and is left out, with a note.

Every floating-point input is differentiated unless it is declared (``no_grad``) or is a
target the backward leaves alone; so is every floating-point tensor the layer holds, found by
searching its attributes (see :mod:`.subject`). References are computed from untouched
copies: a backward that writes into ``out.g``, an input or a weight is a failure of its own.
A failure gets its cause where the numbers show one (transposed, a factor, a sign, a sum not
taken, ``out.g`` ignored, NaN). Autograd agrees with a correct hand gradient to round-off
(~1e-15); finite differences to ~1e-8: the default tolerances leave a wide margin, while a
wrong formula fails by orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from handgrad.check.compare import HandRun, Judge, Tolerances
from handgrad.check.diagnose import accumulated_target, exception_hint
from handgrad.check.numeric import Evaluator, Numeric, same
from handgrad.check.report import CANNOT_CHECK, CheckReport, TensorCheck
from handgrad.check.subject import TARGET_NAMES, Copy, NotALayer, Subject, repeatable
from handgrad.check.usercode import UserCodeError, call_user, resolve
from handgrad.nn.module import GradientShapeError

Reference = Callable[..., Tensor]


def gradcheck(
    module: Any,
    *inputs: Any,
    reference: Reference | None = None,
    eps: float = 1e-6,
    samples: int = 24,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    numeric_atol: float = 1e-6,
    numeric_rtol: float = 1e-5,
    seed: int = 0,
    no_grad: Sequence[str | int] = (),
) -> CheckReport:
    """Check the hand-written gradients of ``module`` for ``inputs``; see the module docstring.

    Args:
        module: a :class:`~handgrad.Module`, or any object with the lesson's protocol
            (``__call__`` and ``backward()``); it is copied, never changed.
        inputs: example arguments. Integer ones (labels) are never differentiated.
        reference: optional ``reference(module, *inputs) -> Tensor`` computing the forward
            with PyTorch, to check the forward's value too (``forward_error``).
        eps: finite-difference step.
        samples: at most this many elements of each tensor are checked numerically.
        atol, rtol: pass when hand vs autograd differ by at most ``atol`` or ``rtol`` relative.
        numeric_atol, numeric_rtol: the same for hand vs finite differences.
        seed: seeds the upstream gradients, the sampled elements and the random generators
            before every forward (dropout masks repeat).
        no_grad: inputs (by name or position) and held tensors (by name) not to differentiate:
            targets, constants.

    Returns:
        a :class:`CheckReport`; ``report.ok`` is true when every gradient is right and
        ``report.status`` is the exit status ``handgrad check`` gives (0, 1 or 2).
    """
    # A check is thousands of tiny float64 operations: threads add only hand-off costs (and
    # spin-waits on a busy machine), so use one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check = _Check(module, inputs, reference, eps, samples, seed, set(no_grad))
        check.tol = Tolerances(atol, rtol, numeric_atol, numeric_rtol)
        return check.run()
    finally:
        torch.set_num_threads(threads)


def _mix(seed: int, stream: int) -> int:
    """A seed for ``stream`` that no user's ``manual_seed(seed)`` reproduces."""
    return (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**63


class _Check:
    tol: Tolerances

    def __init__(
        self,
        layer: Any,
        inputs: tuple[Any, ...],
        reference: Reference | None,
        eps: float,
        samples: int,
        seed: int,
        no_grad: set[str | int],
    ) -> None:
        self.layer, self.reference = layer, reference
        self.eps, self.samples, self.seed, self.no_grad = eps, samples, seed, no_grad
        self.xs = tuple(
            x.detach().to(torch.float64).clone()
            if isinstance(x, Tensor) and x.is_floating_point()
            else x
            for x in inputs
        )
        self.report = CheckReport(type(layer).__name__)

    # ------------------------------------------------------------------------------ driver
    def run(self) -> CheckReport:
        report = self.report
        try:
            self.subject = Subject.of(self.layer, len(self.xs))
        except NotALayer as exc:
            report.fail(str(exc), CANNOT_CHECK)
            return report
        report.module = self.subject.label
        self.names = self.subject.names
        try:
            runs = self._hand_runs()
        except _Stop:
            return report
        self._classify(runs)
        if not self.targets:
            report.fail(
                "nothing to check: no floating-point input or tensor with a gradient "
                f"(found: {', '.join(self.names) or 'no inputs'})",
                CANNOT_CHECK,
            )
            return report
        if self.reference is not None:
            self._check_reference()
        auto = self._autograd()
        try:
            numeric = self._numeric(runs[0].out, auto is None)
        except _Stop:
            return report
        judge = Judge(
            self.tol, report, self.evaluator, self.names, self.xs, self.inputs, self.subject.kind
        )
        for name in self.targets:
            check = judge.compare(name, runs, auto, numeric)
            if check is not None:
                report.tensors.append(check)
        return report

    # ---------------------------------------------------------------------- hand-written
    def _hand_runs(self) -> list[HandRun]:
        runs: list[HandRun] = []
        for k in range(2):
            c = self.subject.fresh()
            xs = self._inputs()
            before = {n: t.detach().clone() for n, t in c.tensors.items()}
            out = self._forward(c, xs, "forward")
            if k == 0:
                self._first_output(out, c, xs, before)
            dout = self.douts[k]
            given = dout.clone()
            run = HandRun(out, {})
            after_forward = {n: t.detach().clone() for n, t in c.tensors.items()}
            xs_after_forward = [x.clone() if isinstance(x, Tensor) else x for x in xs]
            try:
                run.returned = call_user("backward", self.subject.backward, c.layer, out, given)
            except UserCodeError as err:
                name = (
                    self._name_of(err.cause.tensor, c, xs)
                    if isinstance(err.cause, GradientShapeError)
                    else None
                )
                if name is None:
                    hint = exception_hint(err, self.subject.kind)
                    msg = f"{err}" + (f"; {hint}" if hint else "")
                    culprit = self._accumulated(err, c, xs)
                    if culprit is None:
                        self.report.fail(msg)
                    else:  # `w.g += ...` on a w.g that is None: name the tensor
                        self.report.tensors.append(
                            TensorCheck(culprit[0], tuple(culprit[1].shape), problem=msg)
                        )
                    raise _Stop from err
                run.shape_errors[name] = err.cause.grad
            if k == 0:
                self._wrote(given, dout, xs, xs_after_forward, c, after_forward)
            grads = self.subject.input_grads(xs, run.returned)
            run.grads = {self.names[i]: g for i, g in enumerate(grads)}
            for n, t in c.tensors.items():
                run.grads[n] = t.__dict__.get("g")
            run.grads.update(run.shape_errors)
            runs.append(run)
        return runs

    def _first_output(self, out: Any, c: Copy, xs: list[Any], before: dict[str, Tensor]) -> None:
        """Validate the output, choose the upstream gradients, find what forward changed."""
        report = self.report
        if not isinstance(out, Tensor) or not out.is_floating_point():
            report.fail(
                f"forward returned {type(out).__name__}"
                + (f" of {out.dtype}" if isinstance(out, Tensor) else "")
                + ": it must return one floating-point tensor",
                CANNOT_CHECK,
            )
            raise _Stop
        report.loss = out.numel() == 1
        self.douts = self._directions(out)
        self.subject.drop_replaced(c)
        self.state = {
            n
            for n, t in c.tensors.items()
            if not torch.equal(t.detach(), before[n])
            and not next(f for f in self.subject.held if f.name == n).buffer
        }
        for n in sorted(self.state):
            report.notes.append(
                f"{n}: changed by forward (state such as a running mean, not checked)"
            )
        for i, x in enumerate(xs):
            if isinstance(x, Tensor) and not torch.equal(x, self.xs[i]):
                report.notes.append(
                    f"forward changed its input {self.names[i]} in place (the layer before it "
                    "would see the change)"
                )
        if not bool(torch.isfinite(out).all().item()):
            report.notes.append(
                "forward gave NaN or Inf for these inputs: give inputs in the layer's domain "
                "(e.g. positive ones for log or sqrt: --range 0.1,2 on the command line)"
            )

    def _directions(self, out: Tensor) -> list[Tensor]:
        gen = torch.Generator().manual_seed(_mix(self.seed, 1))
        if self.report.loss:
            # dout = 1 checks the loss as the last layer; a second, negative scalar checks that
            # its backward scales with out.g, as it must inside a chain.
            second = -(0.5 + torch.rand((), generator=gen, dtype=torch.float64))
            return [torch.ones_like(out), second.expand_as(out).clone()]
        douts = []
        while len(douts) < 2:
            d = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
            if not any(self._collinear(d, x) for x in (*self.xs, *douts)):
                douts.append(d)
        return douts

    @staticmethod
    def _collinear(d: Tensor, x: Any) -> bool:
        if not isinstance(x, Tensor) or x.shape != d.shape or not x.is_floating_point():
            return False
        x = x.to(d.device, d.dtype)
        denom = (d.norm() * x.norm()).item()
        return denom > 0 and abs((d * x).sum().item()) / denom > 0.99

    def _wrote(
        self,
        given: Tensor,
        dout: Tensor,
        xs: list[Any],
        xs_before: list[Any],
        c: Copy,
        before: dict[str, Tensor],
    ) -> None:
        """A backward that writes into what it was given is a failure of its own (the
        references below never see the changed values)."""
        changed = []
        if not torch.equal(given, dout):
            changed.append("out.g")
        for i, x in enumerate(xs):
            if isinstance(x, Tensor) and not torch.equal(x, xs_before[i]):
                changed.append(self.names[i])
        for n, t in c.tensors.items():
            if n not in self.state and not torch.equal(t.detach(), before[n]):
                changed.append(n)
        for n in changed:
            why = (
                "the upstream gradient belongs to the caller: a tensor that feeds two layers "
                "would hand the other one a changed gradient; write to a new tensor"
                if n == "out.g"
                else "backward must not change the values it differentiates"
            )
            self.report.fail(f"bwd wrote into {n} ({why})")

    def _accumulated(self, err: UserCodeError, c: Copy, xs: list[Any]) -> tuple[str, Tensor] | None:
        """The tensor of a failed ``x.g += ...`` line, with its name, if it can be told."""
        expression = accumulated_target(err.line or "")
        if expression is None:
            return None
        t = resolve(err.cause.__traceback__, expression)
        name = self._name_of(t, c, xs) if isinstance(t, Tensor) else None
        return (name, t) if name is not None else None

    def _name_of(self, t: Tensor, c: Copy, xs: list[Any]) -> str | None:
        for n, held in c.tensors.items():
            if held is t:
                return n
        for i, x in enumerate(xs):
            if x is t:
                return self.names[i]
        return None

    def _classify(self, runs: list[HandRun]) -> None:
        """Which tensors are checked: differentiable inputs and held tensors, less declared
        ones, state, and targets the backward leaves alone."""
        layer_no_grad = set(getattr(self.layer, "no_grad_args", ()) or ())
        self.inputs: list[str] = []
        for i, x in enumerate(self.xs):
            name = self.names[i]
            if not (isinstance(x, Tensor) and x.is_floating_point()):
                continue
            if i in layer_no_grad or i in self.no_grad or name in self.no_grad:
                continue
            if i > 0 and name in TARGET_NAMES and all(r.grads.get(name) is None for r in runs):
                self.report.notes.append(
                    f"{name}: taken as a target (backward sets no gradient for it)"
                )
                continue
            self.inputs.append(name)
        held = [
            f.name
            for f in self.subject.held
            if not f.buffer and f.name not in self.state and f.name not in self.no_grad
        ]
        self.targets = self.inputs + held

    def _inputs(self) -> list[Any]:
        return [x.clone() if isinstance(x, Tensor) else x for x in self.xs]

    def _forward(self, c: Copy, xs: Sequence[Any], stage: str) -> Any:
        try:
            with repeatable(self.seed, c.generators):
                return call_user(stage, self.subject.forward, c.layer, xs)
        except UserCodeError as err:
            msg = str(err)
            if "Double" in msg and "Float" in msg:
                msg += (
                    "; the checker runs in float64 and converts the tensors it finds in the "
                    "layer's attributes: one the forward uses is elsewhere (a global?) or made "
                    "inside forward in float32"
                )
            self.report.fail(msg, CANNOT_CHECK)
            raise _Stop from err

    def _check_reference(self) -> None:
        assert self.reference is not None
        c, mine = self.subject.fresh(), self.subject.fresh()
        try:
            with torch.no_grad(), repeatable(self.seed, c.generators):
                expected = call_user("the reference", self.reference, c.layer, *self._inputs())
        except UserCodeError as err:
            self.report.fail(str(err), CANNOT_CHECK)
            return
        with torch.no_grad(), repeatable(self.seed, mine.generators):
            got = self.subject.forward(mine.layer, self._inputs())
        self.subject.forget(mine.layer)
        if not isinstance(expected, Tensor) or expected.shape != got.shape:
            what = tuple(expected.shape) if isinstance(expected, Tensor) else type(expected)
            self.report.fail(
                f"the reference returned {what}, the forward {tuple(got.shape)}", CANNOT_CHECK
            )
            return
        expected = expected.detach().to(got.dtype)
        err = (got.detach() - expected).abs().max().item() if got.numel() else 0.0
        self.report.forward_error = err
        if not err <= max(self.tol.atol, self.tol.rtol * expected.abs().max().item()):
            self.report.fail(f"forward differs from the reference by {err:.2e}")

    # -------------------------------------------------------------------------- autograd
    def _autograd(self) -> list[dict[str, Tensor | None]] | None:
        """Autograd's gradient of every target in each direction, or ``None`` (with a note)
        where autograd cannot follow the forward."""
        c = self.subject.fresh()
        xs = self._inputs()
        leaves: dict[str, Tensor] = {}
        for name in self.inputs:
            i = self.names.index(name)
            xs[i].requires_grad_(True)
            leaves[name] = xs[i]
        for name in self.targets[len(self.inputs) :]:
            leaves[name] = c.tensors[name].requires_grad_(True)
        try:
            with torch.enable_grad(), repeatable(self.seed, c.generators):
                out = call_user("forward", self.subject.forward, c.layer, xs)
            if not isinstance(out, Tensor) or not out.requires_grad:
                raise RuntimeError("its output does not depend on anything autograd tracked")
            result = []
            for d in self.douts:
                grads = torch.autograd.grad(
                    out, list(leaves.values()), d, retain_graph=True, allow_unused=True
                )
                result.append(dict(zip(leaves, grads, strict=True)))
        except (UserCodeError, RuntimeError) as exc:
            cause = exc.cause if isinstance(exc, UserCodeError) else exc
            first = (str(cause).strip().splitlines() or [""])[0]
            self.report.notes.append(
                f"autograd cannot follow the forward ({type(cause).__name__}: {first}): "
                "checked against finite differences only"
            )
            return None
        finally:
            self.subject.forget(c.layer)
            for t in leaves.values():
                t.requires_grad_(False)
        return result

    # ---------------------------------------------------------------- finite differences
    def _numeric(self, hand_out: Tensor, fd_only: bool) -> dict[str, Numeric]:
        c = self.subject.fresh()
        args = self._inputs()
        f = Evaluator(self._forward, self.subject.forget, c, args, self.names, self.eps)
        base = f()
        again = f()
        for other, what in ((again, "a second call"), (hand_out.detach(), "another copy")):
            if not same(base, other):
                diff = (base - other).abs().max().item()
                self.report.fail(
                    f"forward is not repeatable: {what} with the same inputs and the same seed "
                    f"differs by {diff:.2e} (randomness the checker cannot replay: time, "
                    "a generator made inside forward, a counter); make it deterministic "
                    "while checking",
                    CANNOT_CHECK,
                )
                raise _Stop
        f.fix(base, self.douts)
        self._outsiders(f.read)
        gen = torch.Generator().manual_seed(_mix(self.seed, 2))
        per_tensor = self.samples * (3 if fd_only else 1)
        result = {}
        for name in self.targets:
            n = f.tensor(name).numel()
            idx = (
                list(range(n))
                if n <= per_tensor
                else torch.randperm(n, generator=gen)[:per_tensor].tolist()
            )
            result[name] = f.estimate(name, idx)
        self.evaluator = f
        return result

    def _outsiders(self, read: list[Tensor]) -> None:
        """Note floating-point tensors the forward read that are neither inputs nor held by
        the layer (a global weight): their gradients cannot be checked."""
        fn = getattr(self.layer, "forward", None) or type(self.layer).__call__
        scope = getattr(getattr(fn, "__func__", fn), "__globals__", {})
        for t in read:
            name = next((k for k, v in scope.items() if v is t), None)
            what = f"the global {name}" if name else "a tensor"
            self.report.notes.append(
                f"forward reads {what} {tuple(t.shape)} that is neither an input nor held by "
                "the layer: its gradient is not checked (hold it as an attribute)"
            )


class _Stop(Exception):
    """The check cannot go on; the report says why."""
