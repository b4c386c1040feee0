"""Dropout: inverted scaling, identity in eval, masks reproducible from a seed."""

from __future__ import annotations

import pytest
import torch

from handgrad.check.cases import dropout_reference
from handgrad.nn.layers import Dropout

from support import assert_grads


def test_dropout_gradients() -> None:
    for p, shape in [(0.5, (4, 6)), (0.2, (1, 3, 2, 2)), (0.0, (2, 3))]:
        assert_grads(Dropout(p), torch.randn(*shape, dtype=torch.float64),
                     reference=dropout_reference)  # fmt: skip


def test_identity_in_eval() -> None:
    drop = Dropout(0.5).eval()
    x = torch.randn(4, 5)
    assert drop(x) is x
    assert drop.pending == 0


def test_mask_is_reproducible_from_the_seed() -> None:
    drop = Dropout(0.5)
    x = torch.ones(50, 40)
    torch.manual_seed(7)
    a = drop(x)
    b = drop(x)
    torch.manual_seed(7)
    c = drop(x)
    drop.clear_saved()
    assert torch.equal(a, c)
    assert not torch.equal(a, b)  # the next call draws a new mask
    gen = torch.Generator().manual_seed(3)
    private = Dropout(0.5, generator=gen)
    d = private(x)
    gen.manual_seed(3)
    assert torch.equal(private(x), d)


def test_inverted_scaling_and_mask_statistics() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(400, 500)
    out = drop(x)
    kept = out != 0
    assert torch.all(out[kept] == 1 / 0.75)  # survivors scaled so E[out] = x
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    dx = drop.backward(torch.ones_like(x))
    assert torch.equal(dx, out)  # the gradient uses the same mask and scale


def test_extreme_probabilities() -> None:
    x = torch.randn(3, 4)
    torch.testing.assert_close(Dropout(0.0)(x), x)
    drop = Dropout(1.0)
    assert torch.equal(drop(x), torch.zeros_like(x))
    assert torch.equal(drop.backward(torch.ones_like(x)), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Dropout(1.5)
