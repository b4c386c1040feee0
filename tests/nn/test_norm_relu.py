"""The fused ``BatchNormReLU2d``: gradients, equality with ``BatchNorm2d`` + ``ReLU``, running
statistics and evaluation, and the ``cnn`` model built with it (same state-dict names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as TF

from handgrad.check.cases import batchnorm_relu_reference
from handgrad.nn import functional as F
from handgrad.nn.layers import BatchNorm2d, BatchNormReLU2d, Identity, ReLU
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Sequential
from handgrad.train.checkpoint import load_checkpoint, save_checkpoint

from support import assert_grads, with_random_affine


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
        (lambda: BatchNormReLU2d(3), (4, 3, 2, 2)),
        (lambda: BatchNormReLU2d(2), (1, 2, 3, 3)),  # batch 1: statistics over H, W
        (lambda: BatchNormReLU2d(4, affine=False), (3, 4, 2, 3)),
        (lambda: BatchNormReLU2d(2, momentum=None), (2, 2, 3, 2)),
        (lambda: BatchNormReLU2d(3, track_running_stats=False), (2, 3, 2, 2)),
    ],
)
def test_batchnorm_relu_gradients(make, shape) -> None:
    torch.manual_seed(0)
    m = with_random_affine(make())
    assert_grads(m, r(*shape, scale=3.0, shift=2.0), reference=batchnorm_relu_reference)


def test_identity_gradients() -> None:
    assert_grads(Identity(), r(2, 3), reference=lambda m, x: x)


def pair(c: int) -> tuple[BatchNormReLU2d, Sequential]:
    """The fused layer and the separate pair with the same (random) gamma and beta."""
    fused = with_random_affine(BatchNormReLU2d(c))
    separate = BatchNorm2d(c)
    separate.load_state_dict(fused.state_dict())
    return fused, Sequential(separate, ReLU())


@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (1, 3, 4, 4), (16, 8, 2, 2)])
def test_fused_equals_batchnorm_then_relu_forward_and_every_gradient(shape) -> None:
    torch.manual_seed(1)
    fused, separate = pair(shape[1])
    x, dy = torch.randn(shape) * 2 + 0.5, torch.randn(shape)
    for step in range(3):  # the running statistics move the same way
        y_f, y_s = fused(x + step), separate(x + step)
        torch.testing.assert_close(y_f, y_s)
        torch.testing.assert_close(fused.backward(dy), separate.backward(dy))
        bn = separate[0]
        torch.testing.assert_close(fused.weight.g, bn.weight.g)
        torch.testing.assert_close(fused.bias.g, bn.bias.g)
        fused.zero_grad()
        separate.zero_grad()
    for name, value in separate[0].state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, msg=name)
    fused.eval()
    separate.eval()
    torch.testing.assert_close(fused(x), separate(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_eval_matches_torch_after_the_same_training_batches(momentum) -> None:
    ours, theirs = BatchNormReLU2d(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum)
    torch.manual_seed(2)
    for _ in range(3):
        x = torch.randn(6, 4, 3, 3) * 2 + 1
        torch.testing.assert_close(ours(x), torch.relu(theirs(x)))
        ours.clear_saved()
    ours.eval()
    theirs.eval()
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(ours(x), torch.relu(theirs(x)))
    assert ours.pending == 0  # evaluation keeps nothing for a backward


def test_functional_matches_autograd_in_float32_far_from_zero() -> None:
    """Large offsets: the backward recomputes xhat from (x - mean), no cancellation. (The
    forward folds the normalisation into ``x * scale + shift``, exactly like ``BatchNorm2d``:
    at |x| ~ 1000 that is good to ~1e-7 of |x| in float32, hence the forward's atol.)"""
    x = torch.randn(16, 3, 4, 4) + 1000.0
    gamma, beta = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.3, -0.2])
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    ref = TF.relu(TF.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True))
    dy = torch.randn_like(x)
    ref.backward(dy)
    y, cache = F.batchnorm_relu_forward(x, gamma, beta, None, None, training=True)
    torch.testing.assert_close(y, ref.detach(), rtol=1e-4, atol=1e-3)
    grads = F.batchnorm_relu_backward(dy, y, cache)
    for ours, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(ours, leaf.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (1, 3, 4, 4), (16, 8, 2, 2)])
def test_fused_functions_equal_the_readable_batchnorm_then_relu(shape) -> None:
    """The fused pair against the formula as written: readable batch norm, then ReLU."""
    gen = torch.Generator().manual_seed(3)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    gamma = torch.randn(c, generator=gen, dtype=torch.float64)
    beta = torch.randn(c, generator=gen, dtype=torch.float64)
    h, cache = F.batchnorm_forward(x, gamma, beta, None, None, training=True)
    y, _ = F.relu_forward(h)
    expected = (y, *F.batchnorm_backward(F.relu_backward(dy, y), cache))
    y_fused, cache_fused = F.batchnorm_relu_forward(x, gamma, beta, None, None, training=True)
    got = (y_fused, *F.batchnorm_relu_backward(dy, y_fused, cache_fused))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_functional_need_dx_false_and_no_affine() -> None:
    x, dy = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    y, cache = F.batchnorm_relu_forward(x, None, None, None, None, training=True)
    dx, dgamma, dbeta = F.batchnorm_relu_backward(dy, y, cache, affine=False, need_dx=False)
    assert dx is None and dgamma is None and dbeta is None
    torch.testing.assert_close(y, TF.relu(TF.batch_norm(x, None, None, training=True)))


def test_bad_input_is_rejected_like_batchnorm2d() -> None:
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        BatchNormReLU2d(3)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNormReLU2d(3)(torch.zeros(1, 3, 1, 1))


def small_cnn(fused: bool) -> Sequential:
    g = torch.Generator().manual_seed(0)
    return build_model("cnn", in_features=64, n_classes=3, channels=(4, 8), strides=(1, 2),
                       dropout=0.0, fused=fused, generator=g)  # fmt: skip


def test_cnn_fused_has_the_same_state_dict_names_and_numbers_as_separate() -> None:
    fused, separate = small_cnn(True), small_cnn(False)
    assert any(isinstance(m, BatchNormReLU2d) for m in fused.modules())
    assert not any(isinstance(m, BatchNormReLU2d) for m in separate.modules())
    sd_f, sd_s = fused.state_dict(), separate.state_dict()
    assert list(sd_f) == list(sd_s)
    assert all(torch.equal(sd_f[k], sd_s[k]) for k in sd_f)
    torch.manual_seed(3)
    x, y = torch.rand(6, 64), torch.randint(0, 3, (6,))
    for model in (fused, separate):
        loss_fn = CrossEntropyLoss()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0])
    for (name, p), q in zip(fused.named_parameters(), separate.parameters(), strict=True):
        torch.testing.assert_close(p.g, q.g, msg=name)
    for name, b in fused.named_buffers():
        torch.testing.assert_close(b, separate.state_dict()[name], msg=name)


def test_checkpoint_of_the_separate_cnn_loads_into_the_fused_one(tmp_path: Path) -> None:
    """Checkpoints saved before the fusion (separate layers) still load, and agree."""
    old = small_cnn(False)
    old(torch.rand(5, 64))  # move the running statistics
    old.clear_saved()
    save_checkpoint(tmp_path / "old", old.state_dict(), {"model": "cnn"})
    new = small_cnn(True)
    new.load_state_dict(load_checkpoint(tmp_path / "old").tensors)
    old.eval()
    new.eval()
    x = torch.rand(4, 64)
    torch.testing.assert_close(new(x), old(x))


def test_sequential_skips_the_input_gradient_behind_parameterless_leading_layers() -> None:
    """The cnn's first conv follows a Reshape: with need_input_grad=False its input gradient
    is not computed, nothing stays pending, and the parameter gradients are unchanged."""
    model = small_cnn(True)
    conv = model[1]
    seen: list[object] = []
    conv.register_backward_hook(lambda m, dout, grads: seen.append(grads[0]))
    x = torch.rand(4, 64)
    model(x)
    assert model.backward(torch.ones(4, 3), need_input_grad=False) is None
    assert seen == [None] and all(m.pending == 0 for m in model.modules())
    grads = [p.g.clone() for p in model.parameters()]
    model.zero_grad()
    model(x)
    dx = model.backward(torch.ones(4, 3))  # wanted: every layer back-propagates
    assert dx.shape == x.shape and seen[-1] is not None
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.g, g)
    hooked = []  # a backward hook on the leading layer keeps it back-propagated
    model[0].register_backward_hook(lambda m, dout, grads: hooked.append(dout.shape))
    model(x)
    model.backward(torch.ones(4, 3), need_input_grad=False)
    assert hooked == [(4, 1, 8, 8)]
