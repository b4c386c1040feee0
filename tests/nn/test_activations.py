"""Activations: forward against torch, gradients checked, properties over random values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.check.cases import general_relu_reference
from handgrad.nn.layers import GELU, GeneralRelu, LeakyReLU, Mish, Sigmoid, SiLU, Softmax, Tanh

from support import assert_grads

ACTIVATIONS = [
    (lambda: LeakyReLU(), lambda m, x: TF.leaky_relu(x)),
    (lambda: LeakyReLU(0.3), lambda m, x: TF.leaky_relu(x, 0.3)),
    (lambda: GeneralRelu(), general_relu_reference),
    (lambda: GeneralRelu(leak=0.1, sub=0.4), general_relu_reference),
    (lambda: GeneralRelu(leak=0.1, sub=0.4, maxv=0.5), general_relu_reference),
    (lambda: GeneralRelu(maxv=0.3), general_relu_reference),
    (lambda: Sigmoid(), lambda m, x: torch.sigmoid(x)),
    (lambda: Tanh(), lambda m, x: torch.tanh(x)),
    (lambda: GELU(), lambda m, x: TF.gelu(x)),
    (lambda: GELU("tanh"), lambda m, x: TF.gelu(x, approximate="tanh")),
    (lambda: SiLU(), lambda m, x: TF.silu(x)),
    (lambda: Mish(), lambda m, x: TF.mish(x)),
    (lambda: Softmax(), lambda m, x: torch.softmax(x, -1)),
    (lambda: Softmax(0), lambda m, x: torch.softmax(x, 0)),
]


@pytest.mark.parametrize("shape", [(1, 1), (4, 5), (2, 3, 4)])
@pytest.mark.parametrize(("make", "ref"), ACTIVATIONS)
def test_activation_gradients(make, ref, shape) -> None:
    assert_grads(make(), 2 * torch.randn(*shape, dtype=torch.float64), reference=ref)


def test_general_relu_is_the_course_formula() -> None:
    x = torch.linspace(-3, 3, 61)
    out = GeneralRelu(leak=0.1, sub=0.4, maxv=1.0).eval()(x)
    torch.testing.assert_close(out, (TF.leaky_relu(x, 0.1) - 0.4).clamp_max(1.0))
    torch.testing.assert_close(GeneralRelu().eval()(x), torch.relu(x))


def test_gelu_rejects_unknown_approximation() -> None:
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        GELU("erf")


def test_softmax_is_stable_for_huge_logits() -> None:
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    out = Softmax().eval()(x)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0]]))


SMOOTH = [
    (Sigmoid, torch.sigmoid),
    (Tanh, torch.tanh),
    (GELU, TF.gelu),
    (SiLU, TF.silu),
    (Mish, TF.mish),
    (lambda: Softmax(1), lambda t: torch.softmax(t, 1)),
]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=6, max_size=6),
    st.integers(0, len(SMOOTH) - 1),
)
def test_smooth_activations_match_autograd(values, which) -> None:
    make, fn = SMOOTH[which]
    x = torch.tensor(values, dtype=torch.float64).view(2, 3)
    leaf = x.clone().requires_grad_(True)
    dout = torch.linspace(-1, 1, 6, dtype=torch.float64).view(2, 3)
    fn(leaf).backward(dout)
    layer = make()
    out = layer(x)
    torch.testing.assert_close(out, fn(x))
    torch.testing.assert_close(layer.backward(dout), leaf.grad)
