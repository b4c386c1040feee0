"""The ``cnn`` recipe: shapes, parameters, errors, and that it learns."""

from __future__ import annotations

import pytest
import torch

from handgrad.nn.layers import Conv2d
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import MODELS, build_model
from handgrad.optim.optimizers import SGD


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cnn_is_registered_and_maps_rows_to_logits() -> None:
    assert "cnn" in MODELS
    model = build_model("cnn", generator=torch.Generator().manual_seed(0))
    assert model(torch.rand(3, 784)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == 246_394
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert [c.geometry.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (1, 1)]
    assert all(c.bias is None for c in convs)  # batch norm's beta does that job


def test_cnn_same_seed_same_weights() -> None:
    a = build_model("cnn", generator=torch.Generator().manual_seed(1)).state_dict()
    b = build_model("cnn", generator=torch.Generator().manual_seed(1)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_rejects_non_square_rows() -> None:
    with pytest.raises(ValueError, match="not a square image"):
        build_model("cnn", in_features=780)
    with pytest.raises(ValueError, match="one stride per block"):
        build_model("cnn", channels=(8, 16), strides=(1,))


def test_cnn_learns_a_small_problem() -> None:
    """A few SGD steps on 32 noisy images: is the bright square in the top or bottom half?"""
    torch.manual_seed(0)
    y = torch.randint(0, 2, (32,))
    images = 0.3 * torch.rand(32, 10, 10)
    for i, label in enumerate(y.tolist()):
        row = 1 if label == 0 else 6
        images[i, row : row + 3, 4:7] += 1.0
    x = images.view(32, 100)
    model = build_model("cnn", in_features=100, n_classes=2, channels=(4, 8), strides=(1, 2),
                        dropout=0.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        dlogits, _ = loss_fn.backward()
        model.backward(dlogits)
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]
