"""Cross-entropy: value against PyTorch, gradients against autograd and finite differences,
stability at huge logits, validation, and the accuracy / confusion-matrix metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from handgrad.check.cases import cross_entropy_reference
from handgrad.errors import HandgradError
from handgrad.nn.functional import cross_entropy_backward, cross_entropy_forward
from handgrad.nn.layers import Linear
from handgrad.nn.layers.losses import CrossEntropyLoss, LossInputError
from handgrad.nn.module import Sequential
from handgrad.train.metrics import accuracy, confusion_matrix

from support import assert_grads


def logits(n: int, c: int, scale: float = 1.0, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale + shift


def labels(n: int, c: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("n", "c", "scale", "shift", "eps"),
    [
        (8, 5, 1.0, 0.0, 0.0),
        (1, 10, 1.0, 0.0, 0.0),  # batch 1
        (1, 1, 1.0, 0.0, 0.0),  # one class: loss 0, gradient 0
        (16, 3, 1e4, 0.0, 0.0),  # huge spread: softmax is one-hot
        (6, 4, 1.0, 1e4, 0.0),  # huge common offset, moderate differences: exp overflows naively
        (6, 4, 1.0, -1e4, 0.0),  # ... and underflows naively
        (7, 3, 1.0, 0.0, 0.1),  # label smoothing
        (1, 10, 3.0, 1e4, 0.25),
        (5, 6, 1.0, 0.0, 1.0),  # all smoothing: the target is uniform
    ],
)
def test_cross_entropy_gradients(n, c, scale, shift, eps) -> None:
    assert_grads(
        CrossEntropyLoss(label_smoothing=eps),
        logits(n, c, scale, shift),
        labels(n, c),
        reference=cross_entropy_reference,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_functional_matches_torch_value_and_grad(dtype, eps, scale) -> None:
    x = logits(32, 10, scale).to(dtype)
    y = labels(32, 10)
    dout = torch.tensor(0.7, dtype=dtype)
    loss, cache = cross_entropy_forward(x, y, eps)
    dx = cross_entropy_backward(dout, cache)

    xr = x.clone().requires_grad_(True)
    ref = TF.cross_entropy(xr, y, label_smoothing=eps)
    ref.backward(dout)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.isfinite(loss) and torch.isfinite(dx).all()
    torch.testing.assert_close(loss, ref.detach(), rtol=tol, atol=tol * scale)
    torch.testing.assert_close(dx, xr.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shift", [1e4, -1e4, 1e30])
def test_huge_logits_stay_finite_in_float32(shift) -> None:
    x = (torch.randn(4, 10) + shift).float()
    y = labels(4, 10)
    loss, cache = cross_entropy_forward(x, y)
    dx = cross_entropy_backward(torch.tensor(1.0), cache)
    assert torch.isfinite(loss) and torch.isfinite(dx).all()
    # Rows of the gradient sum to zero: softmax and the target each sum to 1.
    torch.testing.assert_close(dx.sum(1), torch.zeros(4), atol=1e-6, rtol=0)


def test_backward_does_not_modify_dout_or_cache() -> None:
    x, y = logits(5, 4), labels(5, 4)
    _, cache = cross_entropy_forward(x, y, 0.1)
    log_probs = cache[0].clone()
    dout = torch.tensor(2.0, dtype=torch.float64)
    first = cross_entropy_backward(dout, cache)
    second = cross_entropy_backward(dout, cache)
    assert dout.item() == 2.0
    assert torch.equal(cache[0], log_probs) and torch.equal(first, second)


def test_gradient_flows_through_a_model() -> None:
    torch.manual_seed(0)
    model = Sequential(Linear(6, 4))
    loss_fn = CrossEntropyLoss()
    assert_grads(model, logits(3, 6))  # the layer alone
    x, y = logits(3, 6).float(), labels(3, 4)
    out = model(x)
    loss = loss_fn(out, y)
    dlogits, _ = loss_fn.backward()
    dx = model.backward(dlogits)
    xr = x.clone().requires_grad_(True)
    w = model[0].weight.as_subclass(torch.Tensor).clone().requires_grad_(True)
    b = model[0].bias.as_subclass(torch.Tensor).clone().requires_grad_(True)
    TF.cross_entropy(xr @ w + b, y).backward()
    torch.testing.assert_close(loss.detach(), TF.cross_entropy(x @ w.detach() + b.detach(), y))
    torch.testing.assert_close(dx, xr.grad)
    torch.testing.assert_close(model[0].weight.g, w.grad)
    torch.testing.assert_close(model[0].bias.g, b.grad)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), r"in \[0, 3\).*from 0 to 3"),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 1]), r"from -1 to 2"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 1], dtype=torch.int32), "int64"),
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), "int64"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), r"shape \(3,\).*\(4,\)"),
        (torch.randn(4, 3), torch.tensor([[0], [1], [2], [1]]), r"shape \(4, 1\)"),
        (torch.randn(4), torch.tensor([0, 1, 2, 1]), r"\(N, C\)"),
        (torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 2, 1]), "floating-point"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.int64), "empty"),
    ],
)
def test_bad_inputs_raise_one_clear_error(x, y, message) -> None:
    with pytest.raises(LossInputError, match=message) as info:
        CrossEntropyLoss()(x, y)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HandgradError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("eps", [-0.1, 1.5, "0.1", None])
def test_bad_label_smoothing(eps) -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=eps)


def test_eval_mode_keeps_nothing() -> None:
    loss_fn = CrossEntropyLoss().eval()
    loss_fn(logits(3, 4), labels(3, 4))
    assert loss_fn.pending == 0


def test_accuracy() -> None:
    x = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(x, torch.tensor([1, 0, 0, 0])) == pytest.approx(0.75)
    assert accuracy(x, torch.tensor([0, 1, 0, 1])) == 0.0
    y = labels(50, 7)
    assert accuracy(TF.one_hot(y, 7).float(), y) == 1.0
    with pytest.raises(LossInputError, match="accuracy"):
        accuracy(x, torch.tensor([1, 0]))
    with pytest.raises(LossInputError, match="N = 0"):
        accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))


def test_confusion_matrix() -> None:
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    truth = torch.tensor([0, 1, 2, 2, 2, 0, 0])
    m = confusion_matrix(preds, truth, 3)
    expected = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 1, 2]])
    assert torch.equal(m, expected)
    assert m.sum().item() == 7 and m.trace().item() == 5
    # Agrees with accuracy on random data: the diagonal is the correct predictions.
    x, y = logits(200, 5).float(), labels(200, 5)
    m = confusion_matrix(x.argmax(1), y, 5)
    assert m.trace().item() / 200 == pytest.approx(accuracy(x, y))
    assert torch.equal(m.sum(1), torch.bincount(y, minlength=5))


@pytest.mark.parametrize(
    ("preds", "truth", "n", "message"),
    [
        (torch.tensor([0, 3]), torch.tensor([0, 1]), 3, r"preds must be in \[0, 3\)"),
        (torch.tensor([0, 1]), torch.tensor([0, -1]), 3, "labels must be in"),
        (torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 3, "needs preds"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 3, "integer"),
        (torch.tensor([0]), torch.tensor([0]), 0, "n_classes"),
    ],
)
def test_confusion_matrix_bad_input(preds, truth, n, message) -> None:
    with pytest.raises(LossInputError, match=message):
        confusion_matrix(preds, truth, n)
