"""Every layer and loss against autograd and finite differences: one line per case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from handgrad import Linear, MSELoss, ReLU, Sequential
from handgrad.check.cases import CASES, linear_reference
from handgrad.nn.lesson import Model

from support import assert_grads


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def mse_ref(m, x, y):
    return TF.mse_loss(x.reshape(y.shape), y)


@pytest.mark.parametrize(
    ("make", "inputs", "ref"),
    [
        (lambda: Linear(784, 50), lambda: (r(1, 784),), linear_reference),
        (lambda: Linear(3, 1), lambda: (r(17, 3),), linear_reference),
        (lambda: Linear(1, 9, bias=False), lambda: (r(2, 1),), linear_reference),
        (lambda: Linear(6, 4, init="xavier"), lambda: (r(5, 6),), linear_reference),
        (lambda: ReLU(), lambda: (r(1, 1),), lambda m, x: TF.relu(x)),
        (lambda: ReLU(), lambda: (r(3, 4, 5),), lambda m, x: TF.relu(x)),
        (lambda: MSELoss(), lambda: (r(1, 1), r(1)), mse_ref),
        (lambda: MSELoss(), lambda: (r(9, 1), r(9)), mse_ref),
        (lambda: MSELoss(), lambda: (r(4, 3), r(4, 3)), mse_ref),
        (lambda: Sequential(Linear(5, 3), ReLU(), Linear(3, 2)), lambda: (r(1, 5),), None),
        (lambda: Model([Linear(4, 3), ReLU(), Linear(3, 1)], MSELoss()),
         lambda: (r(6, 4), r(6)), None),
    ],
)  # fmt: skip
def test_layer_gradients(make, inputs, ref) -> None:
    torch.manual_seed(0)
    assert_grads(make(), *inputs(), reference=ref)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_builtin_cases(case) -> None:
    g = torch.Generator().manual_seed(0)
    assert_grads(case.make(g), *case.inputs(g), reference=case.reference)


@pytest.mark.parametrize("seed", range(5))
def test_random_shapes(seed: int) -> None:
    """Random batch sizes (1 included) and widths for the core layers."""
    g = torch.Generator().manual_seed(seed)
    n, i, o = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
    n = 1 if seed == 0 else n
    assert_grads(Linear(i, o), r(n, i), reference=linear_reference)
    assert_grads(ReLU(), r(n, i))
    assert_grads(MSELoss(), r(n, 1), r(n), reference=mse_ref)
