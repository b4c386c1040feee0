"""Batch norm and layer norm: gradients, running statistics and evaluation against torch.nn."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.check.cases import batchnorm_reference, layernorm_reference
from handgrad.nn import functional as F
from handgrad.nn.layers import BatchNorm1d, BatchNorm2d, LayerNorm

from support import assert_grads


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def r(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64) * scale + shift


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: BatchNorm2d(3), (4, 3, 2, 2)),
        (lambda: BatchNorm2d(2), (1, 2, 3, 3)),  # batch 1: the spatial axes give the statistics
        (lambda: BatchNorm2d(4, affine=False), (3, 4, 2, 3)),
        (lambda: BatchNorm1d(5), (6, 5)),
        (lambda: BatchNorm1d(3), (2, 3, 4)),  # (N, C, L)
        (lambda: BatchNorm1d(2, momentum=None), (4, 2)),
    ],
)
def test_batchnorm_gradients(make, shape) -> None:
    torch.manual_seed(0)
    m = make()
    if m.affine:  # non-trivial gamma and beta exercise every term of the formula
        m.weight.data.normal_()
        m.bias.data.normal_()
    assert_grads(m, r(*shape, scale=3.0, shift=2.0), reference=batchnorm_reference)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: LayerNorm(5), (3, 5)),
        (lambda: LayerNorm(5), (1, 5)),
        (lambda: LayerNorm((3, 4)), (2, 3, 4)),
        (lambda: LayerNorm(4, elementwise_affine=False), (2, 3, 4)),
        (lambda: LayerNorm(4, bias=False), (3, 4)),
    ],
)
def test_layernorm_gradients(make, shape) -> None:
    torch.manual_seed(0)
    m = make()
    if m.weight is not None:
        m.weight.data.normal_()
    if m.bias is not None:
        m.bias.data.normal_()
    assert_grads(m, r(*shape, scale=2.0, shift=-1.0), reference=layernorm_reference)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batchnorm2d_eval_matches_torch_after_the_same_training_batches(momentum) -> None:
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        gamma, beta = torch.randn(4), torch.randn(4)
        ours.weight.copy_(gamma)
        ours.bias.copy_(beta)
        theirs.weight.copy_(gamma)
        theirs.bias.copy_(beta)
    for _ in range(5):
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        torch.testing.assert_close(ours(x), theirs(x))
        ours.clear_saved()
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)  # unbiased, as torch
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 5
    ours.eval()
    theirs.eval()
    x = torch.randn(3, 4, 5, 5)
    out = ours(x)
    torch.testing.assert_close(out, theirs(x))
    # evaluation uses the running statistics: one sample alone gives the same answer
    torch.testing.assert_close(ours(x[:1]), out[:1])
    assert ours.pending == 0  # and keeps nothing for a backward


def test_batchnorm1d_matches_torch_in_training_and_eval() -> None:
    ours, theirs = BatchNorm1d(3), nn.BatchNorm1d(3)
    for shape in [(6, 3), (4, 3, 5)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x))
        ours.clear_saved()
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval() -> None:
    bn = BatchNorm2d(2, track_running_stats=False).eval()
    x = torch.randn(4, 2, 3, 3) * 5
    torch.testing.assert_close(bn(x), TF.batch_norm(x, None, None, bn.weight.data, bn.bias.data,
                                                    training=True))  # fmt: skip
    assert dict(bn.named_buffers()) == {}


def test_batchnorm_state_dict_has_torchs_buffers() -> None:
    assert set(BatchNorm2d(3).state_dict()) == set(nn.BatchNorm2d(3).state_dict())


def test_batchnorm_backward_is_exact_for_large_offsets_in_float32() -> None:
    """The backward recomputes xhat from (x - mean): no cancellation for data far from 0."""
    x = torch.randn(16, 3, 4, 4) + 1000.0
    bn = BatchNorm2d(3)
    xr = x.clone().requires_grad_(True)
    dout = torch.randn_like(x)
    TF.batch_norm(xr, None, None, training=True).backward(dout)
    bn(x)
    torch.testing.assert_close(bn.backward(dout), xr.grad, rtol=1e-3, atol=1e-3)


def test_norm_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        BatchNorm2d(3)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, 3, L\)"):
        BatchNorm1d(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1d(3)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2d(3, momentum=2.0)
    with pytest.raises(ValueError, match=r"expected input \(N, \.\.\., 4\)"):
        LayerNorm(4)(torch.zeros(2, 5))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=2, max_size=4),
    st.floats(-100, 100),
    st.floats(0.01, 100),
    st.integers(0, 2**16),
)
@pytest.mark.parametrize(
    ("forward", "backward"),
    [
        (F.batchnorm_forward, F.batchnorm_backward),
        (F.fused_batchnorm_forward, F.fused_batchnorm_backward),
    ],
    ids=["readable", "fused"],
)
def test_batchnorm_functional_matches_autograd(
    forward, backward, shape, shift, scale, seed
) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape[0] = max(shape[0], 2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift
    gamma = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    beta = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    ref = TF.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True)
    dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(dout)
    out, cache = forward(x, gamma, beta, None, None, training=True)
    grads = backward(dout, cache)
    torch.testing.assert_close(out, ref.detach())
    for ours, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(ours, leaf.grad)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (8, 4, 5, 5), (1, 2, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_fused_batchnorm_equals_the_readable_one(shape, affine) -> None:
    """The layers run the fused pair; the readable pair is the formula. Same numbers, the
    running statistics moved the same way, and each backward takes the other's cache."""
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    dout = torch.randn(shape, generator=gen, dtype=torch.float64)
    gamma = torch.randn(c, generator=gen, dtype=torch.float64) if affine else None
    beta = torch.randn(c, generator=gen, dtype=torch.float64) if affine else None
    running = (torch.rand(c, generator=gen, dtype=torch.float64),
               torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)  # fmt: skip
    stats = {k: tuple(t.clone() for t in running) for k in ("readable", "fused")}
    close = {"rtol": 1e-12, "atol": 1e-12}
    out_r, cache_r = F.batchnorm_forward(x, gamma, beta, *stats["readable"], training=True)
    out_f, cache_f = F.fused_batchnorm_forward(x, gamma, beta, *stats["fused"], training=True)
    torch.testing.assert_close(out_f, out_r, **close)
    for fused, readable in zip(stats["fused"], stats["readable"], strict=True):
        torch.testing.assert_close(fused, readable, **close)
    expected = F.batchnorm_backward(dout, cache_r)
    if not affine:  # the fused backward skips the parameter gradients
        expected = (expected[0], None, None)
    for grads in (
        F.fused_batchnorm_backward(dout, cache_f, affine=affine),
        F.fused_batchnorm_backward(dout, cache_r, affine=affine),
        F.batchnorm_backward(dout, cache_f)[:1] + expected[1:],
    ):
        torch.testing.assert_close(grads, expected, **close)
    evaluated = [
        fwd(x, gamma, beta, *stats["readable"], training=False)
        for fwd in (F.batchnorm_forward, F.fused_batchnorm_forward)
    ]
    assert evaluated[0][1] is None and evaluated[1][1] is None  # evaluation keeps no cache
    torch.testing.assert_close(evaluated[1][0], evaluated[0][0], **close)
