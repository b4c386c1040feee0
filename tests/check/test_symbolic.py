"""Activations derived by sympy: they match their hand-written twins in value and gradient,
stay finite where the maths is finite, and refuse formulas they cannot compute safely."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as TF

from handgrad.check.symbolic import Activation
from handgrad.nn.layers import GELU, Mish, Sigmoid, SiLU, Tanh
from handgrad.nn.module import Module

from support import assert_grads

TWINS = [
    ("x * tanh(log(1 + exp(x)))", Mish),
    ("x / (1 + exp(-x))", SiLU),
    ("x * exp(x) / (1 + exp(x))", SiLU),  # the same function, written another way
    ("x / 2 * (1 + erf(x / sqrt(2)))", GELU),
    ("1 / (1 + exp(-x))", Sigmoid),
    ("tanh(x)", Tanh),
]


def values_and_grads(layer: Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = layer(x)
    return out, layer.backward(torch.ones_like(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("formula", "twin"), TWINS, ids=[t[0] for t in TWINS])
def test_sympy_activation_matches_its_hand_written_twin(formula, twin, dtype) -> None:
    x = torch.cat([torch.linspace(-100, 100, 801), torch.tensor([-1e4, -88.8, 88.8, 1e4])])
    x = x.to(dtype)
    ours, grad = values_and_grads(Activation.from_sympy(formula), x)
    theirs, twin_grad = values_and_grads(twin(), x)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(grad, twin_grad, **tol)


@pytest.mark.parametrize(("formula", "twin"), TWINS[:2], ids=["mish", "silu"])
def test_sympy_activation_gradients(formula, twin) -> None:
    x = 3 * torch.randn(4, 5, dtype=torch.float64)
    assert_grads(Activation.from_sympy(formula), x, reference=lambda m, t: twin()(t))


def test_the_lessons_example() -> None:
    sq = Activation.from_sympy("x**2")
    assert sq.derivative == "2*x"
    assert_grads(sq, torch.randn(3, 4, dtype=torch.float64), reference=lambda m, t: t * t)


def test_overflowing_patterns_are_rewritten() -> None:
    softplus = Activation.from_sympy("log(1 + exp(x))")
    assert softplus.formula == "softplus(x)" and softplus.derivative == "sigmoid(x)"
    x = torch.tensor([-1000.0, -50.0, 0.0, 50.0, 100.0, 1000.0])
    torch.testing.assert_close(softplus(x), TF.softplus(x))
    assert Activation.from_sympy("x * exp(x) / (1 + exp(x))").formula == "x*sigmoid(x)"


def test_sympy_expression_in_any_variable() -> None:
    z = sympy.Symbol("z")
    act = Activation.from_sympy(z * sympy.tanh(z), name="ztanh")
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(act(x), x * torch.tanh(x))
    assert repr(act) == "Activation(ztanh)"
    assert_grads(act, x.view(1, 3))


def test_piecewise_and_constant_derivatives() -> None:
    elu = Activation.from_sympy("Piecewise((x, x > 0), (exp(x) - 1, True))")
    assert_grads(elu, torch.randn(4, 4, dtype=torch.float64), reference=lambda m, t: TF.elu(t))
    ident = Activation.from_sympy("x")
    x = torch.randn(2, 3)
    ident(x)
    torch.testing.assert_close(ident.backward(torch.ones(2, 3)), torch.ones(2, 3))
    relu = Activation.from_sympy("Max(x, 0)")
    assert_grads(relu, torch.randn(3, 3, dtype=torch.float64), reference=lambda m, t: t.relu())


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("log(x)", "not a real number at x = -1000"),
        ("sqrt(x)", "not a real number"),
        ("1/x", "not a real number at x = 0"),
        # exp(89) > float32 max on any platform; the quotient itself is below 1.
        ("exp(x) / (2 + exp(x))", "overflows in float32 at x = 89"),
        ("x * y", "exactly one variable, found x, y"),
        ("3", "exactly one variable, found none"),
        ("x +* 2", "cannot parse the formula"),
    ],
)
def test_unsafe_or_invalid_formulas_are_refused(formula, message) -> None:
    with pytest.raises(ValueError, match=message):
        Activation.from_sympy(formula)


def test_exponential_growth_is_allowed_where_the_true_value_overflows() -> None:
    """exp(1000) does not fit any float: inf is the right answer there, not a failure."""
    act = Activation.from_sympy("exp(x)")
    assert torch.isinf(act.eval()(torch.tensor([1000.0]))).all()
