"""Activations written as a formula: sympy derives the backward, torch runs both.

The lesson shows ``sympy.diff(x**2, x)`` giving ``2*x``. Here that becomes a feature::

    >>> mish = Activation.from_sympy("x * tanh(log(1 + exp(x)))")
    >>> mish.derivative
    'x*(1 - tanh(softplus(x))**2)*sigmoid(x) + tanh(softplus(x))'

``from_sympy`` parses the formula (one free variable), rewrites the patterns that overflow in
floating point into stable functions, differentiates with sympy, simplifies the derivative,
compiles both expressions to torch operations (``sympy.lambdify`` with torch), probes them
against sympy's exact values, and returns an element-wise layer whose backward is
``dx = dy * f'(x)``.

Numerical safety. ``log(1 + exp(x))`` overflows for ``x > 88`` in float32 (``exp`` gives
``inf``), and ``exp(x) / (1 + exp(x))`` becomes ``inf / inf = nan``. Before differentiating, the
formula is rewritten: ``log(1 + exp(u)) -> softplus(u)`` (computed as ``max(u, 0) +
log1p(exp(-|u|))``), ``exp(u) / (1 + exp(u))`` and ``1 / (1 + exp(-u)) -> sigmoid(u)``; their
derivatives are ``sigmoid`` and ``sigmoid * (1 - sigmoid)``, so the derivative is stable too.
Then both compiled functions are evaluated in float32 and float64 at probe points from -1000 to
1000 and compared with sympy's exact value: a formula that is not defined for every real input
(``log(x)``, ``sqrt(x)``, ``1/x``), or whose float computation gives ``inf``/``nan`` where the
true value is finite, is refused with a ``ValueError`` that names the expression and the input.

Parsing a formula string runs sympy's parser, which evaluates Python: give formulas you wrote,
not text from untrusted sources.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import sympy
import torch
from sympy.printing.pytorch import TorchPrinter
from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.module import Module

__all__ = ["Activation", "sigmoid", "softplus"]


# ------------------------------------------------------- stable functions sympy can differentiate
class softplus(sympy.Function):
    """``softplus(u) = log(1 + exp(u))``, evaluated without overflow; ``d/du = sigmoid(u)``."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])

    def _eval_rewrite_as_log(self, u: sympy.Expr, **kwargs: Any) -> sympy.Expr:
        return sympy.log(1 + sympy.exp(u))


class sigmoid(sympy.Function):
    """``sigmoid(u) = 1 / (1 + exp(-u))``; ``d/du = sigmoid(u) (1 - sigmoid(u))``."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: Any) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-u))


def _maximum(*args: Tensor | float) -> Tensor:
    out = args[0]
    for a in args[1:]:
        out = torch.maximum(torch.as_tensor(out), torch.as_tensor(a))
    return torch.as_tensor(out)


def _minimum(*args: Tensor | float) -> Tensor:
    out = args[0]
    for a in args[1:]:
        out = torch.minimum(torch.as_tensor(out), torch.as_tensor(a))
    return torch.as_tensor(out)


def _heaviside(x: Tensor, at_zero: float = 0.5) -> Tensor:
    return torch.heaviside(x, torch.as_tensor(at_zero, dtype=x.dtype, device=x.device))


#: Names the compiled code calls that torch spells differently or does not have.
TORCH_NAMESPACE: dict[str, Callable[..., Tensor]] = {
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "maximum_of": _maximum,
    "minimum_of": _minimum,
    "heaviside_step": _heaviside,
}

#: Where the compiled functions are compared with sympy's exact values.
PROBES = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 88.0, 89.0, 100.0, 300.0, 1000.0)


# ---------------------------------------------------------------------------------- rewrite
def _one_plus_exp(e: sympy.Expr) -> sympy.Expr | None:
    """``u`` if ``e`` is ``1 + exp(u)``, else ``None``."""
    if e.is_Add and len(e.args) == 2 and sympy.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sympy.exp):
            return other.args[0]
    return None


def _sigmoid_in_product(e: sympy.Expr) -> sympy.Expr:
    """In a product, ``exp(u) * (1 + exp(u))**-1 -> sigmoid(u)``, and any other
    ``(1 + exp(u))**-1 -> sigmoid(-u)``; the remaining factors are kept."""
    rest, denominators = [], []
    for f in e.args if e.is_Mul else (e,):
        u = _one_plus_exp(f.base) if f.is_Pow and f.exp == -1 else None
        (rest if u is None else denominators).append(f if u is None else u)
    for u in denominators:
        if sympy.exp(u) in rest:
            rest.remove(sympy.exp(u))
            rest.append(sigmoid(u))
        else:
            rest.append(sigmoid(-u))
    return sympy.Mul(*rest)


def _has_one_plus_exp_inverse(t: sympy.Expr) -> bool:
    return bool(t.is_Pow and t.exp == -1 and _one_plus_exp(t.base) is not None)


def stabilize(expr: sympy.Expr) -> sympy.Expr:
    """Rewrite the overflow-prone patterns (module docstring) into ``softplus``/``sigmoid``,
    and numeric constants such as ``sqrt(2)`` or ``pi`` into floats (torch functions take
    tensors, not sympy numbers)."""
    e = expr.replace(
        lambda t: isinstance(t, sympy.log) and _one_plus_exp(t.args[0]) is not None,
        lambda t: softplus(_one_plus_exp(t.args[0])),
    )
    # products first, so that exp(u) / (1 + exp(u)) is paired before its denominator is seen
    e = e.replace(
        lambda t: t.is_Mul and any(_has_one_plus_exp_inverse(f) for f in t.args),
        _sigmoid_in_product,
    )
    e = e.replace(_has_one_plus_exp_inverse, _sigmoid_in_product)
    return e.replace(
        lambda t: t.is_number and not t.is_Rational, lambda t: sympy.Float(t.evalf(17), 17)
    )


def _elementary(expr: sympy.Expr) -> sympy.Expr:
    """``softplus``/``sigmoid`` written back as exp and log, for sympy's exact evaluation."""
    return expr.replace(softplus, lambda u: sympy.log(1 + sympy.exp(u))).replace(
        sigmoid, lambda u: 1 / (1 + sympy.exp(-u))
    )


def parse_formula(formula: str | sympy.Expr) -> tuple[sympy.Expr, sympy.Symbol]:
    """The formula as a sympy expression in one real variable, and that variable."""
    if isinstance(formula, str):
        x = sympy.Symbol("x", real=True)
        names = {"x": x, "softplus": softplus, "sigmoid": sigmoid}
        try:
            expr = sympy.parse_expr(formula, local_dict=names)
        except (sympy.SympifyError, SyntaxError, TypeError, ValueError, NameError) as exc:
            raise ValueError(f"cannot parse the formula {formula!r}: {exc}") from exc
        if not isinstance(expr, sympy.Expr):
            raise ValueError(f"the formula {formula!r} is not an expression in x")
    elif isinstance(formula, sympy.Expr):
        expr = formula
    else:
        raise TypeError(f"from_sympy needs a string or a sympy expression, got {type(formula)}")
    free = sorted(expr.free_symbols, key=str)
    if len(free) != 1:
        raise ValueError(
            f"the formula {formula!s} must depend on exactly one variable, found "
            f"{', '.join(map(str, free)) or 'none'}"
        )
    (var,) = free
    if not isinstance(formula, str):  # make the variable real so sympy simplifies as for reals
        x = sympy.Symbol(str(var), real=True)
        expr, var = expr.subs(var, x), x
    return expr, var


class _Printer(TorchPrinter):
    """sympy's torch printer, taught our two stable functions (they are looked up by name in
    ``TORCH_NAMESPACE``)."""

    def _print_softplus(self, e: sympy.Expr) -> str:
        return f"softplus({self._print(e.args[0])})"

    def _print_sigmoid(self, e: sympy.Expr) -> str:
        return f"sigmoid({self._print(e.args[0])})"

    def _call(self, name: str, e: sympy.Expr) -> str:
        return f"{name}({', '.join(self._print(a) for a in e.args)})"

    # torch.max/min/heaviside do not take Python numbers: call the wrappers instead
    def _print_Max(self, e: sympy.Expr) -> str:
        return self._call("maximum_of", e)

    def _print_Min(self, e: sympy.Expr) -> str:
        return self._call("minimum_of", e)

    def _print_Heaviside(self, e: sympy.Expr) -> str:
        return self._call("heaviside_step", e)


def _compile(expr: sympy.Expr, var: sympy.Symbol) -> Callable[[Tensor], Tensor]:
    """``expr`` as a Python function of one tensor, made of torch operations."""
    fn = sympy.lambdify(var, expr, modules=[TORCH_NAMESPACE, "torch"], printer=_Printer)

    def apply(x: Tensor) -> Tensor:
        out = fn(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:  # a constant, e.g. d/dx x = 1
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device).expand_as(x)
        return out

    return apply


def _exact(expr: sympy.Expr, var: sympy.Symbol, value: float) -> sympy.Expr | None:
    """sympy's value of ``expr`` at ``value``, to 30 digits and unbounded in range (``None``
    where it is undefined or not real)."""
    try:
        v = _elementary(expr).subs(var, sympy.Float(value, 30)).evalf(30)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not v.is_number or v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    re, im = v.as_real_imag()
    return re if abs(im) <= 1e-12 * max(1, abs(re)) else None


def _probe(
    fn: Callable[[Tensor], Tensor], expr: sympy.Expr, var: sympy.Symbol, what: str
) -> str | None:
    """``None`` if ``expr`` is real at every probe point and ``fn`` computes it without
    ``nan``, and without ``inf`` where the true value fits the dtype; else the problem."""
    points = sorted({s * p for p in PROBES for s in (1.0, -1.0)})
    exact = [_exact(expr, var, p) for p in points]
    for p, e in zip(points, exact, strict=True):
        if e is None:
            return (
                f"{what} = {expr} is not a real number at x = {p:g}; an activation must be "
                "defined for every real input"
            )
    for dtype in (torch.float32, torch.float64):
        got = fn(torch.tensor(points, dtype=dtype)).tolist()
        limit = float(torch.finfo(dtype).max)
        for p, g, e in zip(points, got, exact, strict=True):
            if math.isnan(g) or (math.isinf(g) and abs(e) < limit):
                return (
                    f"{what} = {expr} overflows in {str(dtype).removeprefix('torch.')} at "
                    f"x = {p:g}: it computes {g} where the true value is {float(e):.6g}; "
                    "rewrite it in a form that stays finite (log(1 + exp(u)) and "
                    "1/(1 + exp(-u)) are rewritten automatically)"
                )
    return None


Derived = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], str, str]


def _derive(formula: str | sympy.Expr, simplify: bool) -> Derived:
    """Compiled ``f`` and ``f'`` and their text (see :meth:`Activation.from_sympy`)."""
    expr, var = parse_formula(formula)
    expr = stabilize(expr)
    f = _compile(expr, var)
    problem = _probe(f, expr, var, "f(x)")
    if problem:
        raise ValueError(problem)
    raw = sympy.diff(expr, var)
    candidates = [stabilize(raw)]
    if simplify:
        simple = stabilize(sympy.simplify(raw))
        if sympy.count_ops(simple) <= sympy.count_ops(candidates[0]):
            candidates.insert(0, simple)
    problems = []
    for d in candidates:
        df = _compile(d, var)
        problem = _probe(df, d, var, "f'(x)")
        if problem is None:
            return f, df, str(expr), str(d)
        problems.append(problem)
    raise ValueError(problems[-1])


@functools.lru_cache(maxsize=64)
def _derive_text(formula: str, simplify: bool) -> Derived:
    """:func:`_derive` for formula strings, remembered (sympy's simplify is slow)."""
    return _derive(formula, simplify)


# ------------------------------------------------------------------------------------ layer
class Activation(Module):
    """An element-wise activation ``y = f(x)`` with ``dx = dy * f'(x)``, from compiled formulas.

    Build it with :meth:`from_sympy`. Attributes: ``formula`` and ``derivative`` (the stabilised
    expressions as text) and ``name``. The backward keeps nothing beyond ``x``.
    """

    init_nonlinearity = "relu"

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        df: Callable[[Tensor], Tensor],
        *,
        formula: str,
        derivative: str,
        name: str | None = None,
    ) -> None:
        self.f, self.df = f, df
        self.formula, self.derivative, self.name = formula, derivative, name

    @classmethod
    def from_sympy(
        cls, formula: str | sympy.Expr, *, name: str | None = None, simplify: bool = True
    ) -> Activation:
        """Parse, stabilise, differentiate, simplify, compile and probe ``formula``.

        Args:
            formula: a string in ``x`` such as ``"x * tanh(log(1 + exp(x)))"``, or a sympy
                expression in one variable. ``softplus`` and ``sigmoid`` may be used by name.
            name: shown by ``repr`` (default: the formula).
            simplify: simplify the derivative (default ``True``; the simplified form is used
                only if it is no longer than the raw one and passes the probes).

        Raises:
            ValueError: the formula cannot be parsed, has not exactly one variable, is not
                real for every real input, or overflows where its true value is finite.
        """
        derived = (
            _derive_text(formula, simplify)
            if isinstance(formula, str)
            else _derive(formula, simplify)
        )
        f, df, text, dtext = derived
        return cls(f, df, formula=text, derivative=dtext, name=name)

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = out.g * self.df(x)

    def extra_repr(self) -> str:
        return self.name or self.formula
