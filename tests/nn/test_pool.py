"""Pooling and reshaping layers against torch.nn.functional, gradients checked by assert_grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.check.cases import avgpool_reference, maxpool_reference
from handgrad.nn import functional as F
from handgrad.nn.functional.conv import ConvGeometry
from handgrad.nn.layers import AvgPool2d, Flatten, GlobalAvgPool, MaxPool2d, Reshape

from support import assert_grads


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


POOLS = [
    ((2,), (2, 3, 4, 4)),
    ((2,), (1, 1, 5, 5)),  # batch 1, odd size: the last row/column is not pooled
    ((3, 2, 1), (2, 2, 5, 5)),  # overlapping windows with padding
    ((3, 1), (1, 2, 4, 5)),  # stride 1
    (((2, 3), (2, 1)), (2, 1, 6, 7)),  # rectangular
]


@pytest.mark.parametrize(("args", "shape"), POOLS)
def test_maxpool_gradients(args, shape) -> None:
    assert_grads(MaxPool2d(*args), r(*shape), reference=maxpool_reference)


def test_maxpool_dilation_gradients() -> None:
    assert_grads(MaxPool2d(2, 1, 0, dilation=2), r(2, 2, 5, 5), reference=maxpool_reference)


@pytest.mark.parametrize(("args", "shape"), POOLS)
def test_avgpool_gradients(args, shape) -> None:
    assert_grads(AvgPool2d(*args), r(*shape), reference=avgpool_reference)


def test_maxpool_caches_torchs_argmax_indices() -> None:
    x = torch.randn(2, 3, 7, 7)
    out, idx = F.maxpool2d_forward(x, ConvGeometry((3, 3), (2, 2), (1, 1)))
    ref, ref_idx = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(out, ref)
    assert torch.equal(idx, ref_idx)


def test_maxpool_ties_send_the_gradient_to_one_pixel() -> None:
    """A constant window has many maxima; the gradient must go to exactly one of them (else it
    would be counted several times), the first one, as in PyTorch."""
    pool = MaxPool2d(2)
    x = torch.ones(1, 1, 2, 2)
    pool(x)
    dx = pool.backward(torch.ones(1, 1, 1, 1))
    assert dx.sum() == 1 and dx[0, 0, 0, 0] == 1


def test_global_avgpool_gradients_and_shape() -> None:
    assert_grads(GlobalAvgPool(), r(2, 3, 4, 5), reference=lambda m, x: x.mean((2, 3)))
    assert_grads(GlobalAvgPool(), r(1, 1, 1, 1), reference=lambda m, x: x.mean((2, 3)))
    assert GlobalAvgPool()(torch.zeros(5, 7, 3, 3)).shape == (5, 7)


def test_flatten_and_reshape() -> None:
    assert_grads(Flatten(), r(2, 3, 4), reference=lambda m, x: x.flatten(1))
    assert_grads(Reshape(1, 3, 4), r(1, 12), reference=lambda m, x: x.view(1, 1, 3, 4))
    assert Reshape(1, 28, 28)(torch.zeros(64, 784)).shape == (64, 1, 28, 28)
    with pytest.raises(ValueError, match="784 values, but shape"):
        Reshape(1, 27, 27)(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="positive sizes"):
        Reshape(0, 4)


def test_pool_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="at most half the kernel"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="expected input"):
        MaxPool2d(2)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="smaller than a window"):
        AvgPool2d(5)(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="expected input"):
        GlobalAvgPool()(torch.zeros(3, 4))


@st.composite
def pool_problem(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    h, w = draw(st.integers(k[0], 8)), draw(st.integers(k[1], 8))
    return ConvGeometry(k, s, p), (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)


@settings(max_examples=40, deadline=None)
@given(pool_problem(), st.integers(0, 2**16))
def test_pools_match_autograd_on_random_windows(problem, seed) -> None:
    geo, shape = problem
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    for ours, theirs in (
        (F.maxpool2d_forward, lambda t: TF.max_pool2d(t, geo.kernel, geo.stride, geo.padding)),
        (F.avgpool2d_forward, lambda t: TF.avg_pool2d(t, geo.kernel, geo.stride, geo.padding)),
    ):
        leaf = x.clone().requires_grad_(True)
        ref = theirs(leaf)
        dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        ref.backward(dout)
        if ours is F.maxpool2d_forward:
            out, idx = ours(x, geo)
            dx = F.maxpool2d_backward(dout, idx, x.shape)
        else:
            out = ours(x, geo)
            dx = F.avgpool2d_backward(dout, x.shape, geo)
        torch.testing.assert_close(out, ref.detach())
        torch.testing.assert_close(dx, leaf.grad)
