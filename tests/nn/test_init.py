"""Weight initialisation per layer: the rule of handgrad.nn.init, measured on real draws."""

from __future__ import annotations

import math

import pytest
import torch

from handgrad import Linear, Sequential
from handgrad.nn.init import init_model, lsuv_init, recommended_init
from handgrad.nn.layers import (
    GELU,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GeneralRelu,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Tanh,
)


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        (ReLU(), ("kaiming", "relu", 0.0)),
        (GELU(), ("kaiming", "relu", 0.0)),
        (LeakyReLU(0.2), ("kaiming", "leaky_relu", 0.2)),
        (GeneralRelu(leak=0.1, sub=0.4), ("kaiming", "leaky_relu", 0.1)),
        (Tanh(), ("xavier", "tanh", 0.0)),
        (Sigmoid(), ("xavier", "sigmoid", 0.0)),
        (None, ("kaiming", "linear", 0.0)),
    ],
)
def test_recommended_init(activation, expected) -> None:
    assert recommended_init(activation) == expected


def test_init_model_draws_each_layer_for_the_activation_after_it() -> None:
    model = Sequential(
        Conv2d(8, 64, 3, padding=1), BatchNorm2d(64), ReLU(),  # Kaiming: std sqrt(2 / 72)
        Conv2d(64, 64, 3, padding=1), Tanh(),  # Xavier: 5/3 sqrt(2 / (576 + 576))
        Flatten(), Dropout(0.1),
        Linear(64 * 4, 200), LeakyReLU(0.5),  # Kaiming, leaky: sqrt(2 / 1.25) / sqrt(256)
        Linear(200, 300),  # the head: gain 1, std 1 / sqrt(200)
    )  # fmt: skip
    for p in model.parameters():
        p.data.fill_(3.0)
    init_model(model, generator=torch.Generator().manual_seed(0))
    stds = [m.weight.std().item() for m in (model[0], model[3], model[7], model[9])]
    expected = [
        math.sqrt(2 / 72),
        5 / 3 * math.sqrt(2 / 1152),
        math.sqrt(2 / 1.25) / math.sqrt(256),
        1 / math.sqrt(200),
    ]
    for got, want in zip(stds, expected, strict=True):
        assert abs(got / want - 1) < 0.05, (got, want)
    assert all(m.bias.abs().sum() == 0 for m in (model[0], model[3], model[7], model[9]))
    assert torch.all(model[1].weight == 3.0)  # batch norm is left alone


def test_kaiming_keeps_relu_activations_from_shrinking_or_growing() -> None:
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [Linear(256, 256), ReLU()]
    model = init_model(Sequential(*layers)).eval()
    x = torch.randn(512, 256)
    out = model(x)
    assert 0.5 < out.pow(2).mean().item() / x.pow(2).mean().item() < 2.0


def test_lsuv_gives_unit_variance_outputs() -> None:
    torch.manual_seed(0)
    model = Sequential(Linear(50, 100), Tanh(), Linear(100, 100), ReLU(), Linear(100, 10))
    dropout = Dropout(0.5)
    model.layers.insert(2, dropout)
    report = lsuv_init(model, torch.randn(256, 50) * 5)
    assert [name for name, _, _ in report] == ["layers.0", "layers.3", "layers.5"]
    assert all(abs(std - 1) <= 0.02 and abs(mean) <= 0.02 for _, mean, std in report)
    assert model.training and dropout.training  # modes are restored
    assert all(m.pending == 0 for m in model.modules())
