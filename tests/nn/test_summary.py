"""``model.summary(input_shape)``: layers, output shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch

from handgrad import BatchNorm1d, Dropout, Linear, ReLU, Sequential, build_model


def test_summary_lists_layers_shapes_and_counts() -> None:
    model = Sequential(Sequential(Linear(4, 3), ReLU()), Dropout(0.5), Linear(3, 2))
    s = model.summary((4,))
    rows = [(r.name, r.depth, r.kind, r.shape, r.params) for r in s.rows]
    assert rows == [
        ("", 0, "Sequential", ("N", 2), 23),
        ("layers.0", 1, "Sequential", ("N", 3), 15),
        ("layers.0.layers.0", 2, "Linear", ("N", 3), 15),
        ("layers.0.layers.1", 2, "ReLU", ("N", 3), 0),
        ("layers.1", 1, "Dropout", ("N", 3), 0),
        ("layers.2", 1, "Linear", ("N", 2), 8),
    ]
    assert s.total_params == sum(p.numel() for p in model.parameters())
    text = str(s).splitlines()
    assert text[0] == "Sequential: input (N, 4)" and text[-1] == "23 parameters, output (N, 2)"
    assert any(line.startswith("  0 (Linear)") and line.endswith(" 15") for line in text)


def test_summary_of_the_cnn_recipe_ends_in_ten_classes() -> None:
    s = build_model("cnn").summary((1, 28, 28))
    assert s.rows[0].shape == ("N", 10)
    assert s.total_params == sum(p.numel() for p in build_model("cnn").parameters())


def test_summary_leaves_the_model_as_it_was() -> None:
    model = Sequential(Linear(4, 3), BatchNorm1d(3), ReLU())
    model.eval()
    model.layers[0].train()  # a mixed state, kept as it is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.summary((4,))
    assert [m.training for m in model.modules()] == [False, True, False, False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.pending == 0 for m in model.modules())
    assert not any(m.__dict__.get("_forward_hooks") for m in model.modules())


def test_summary_of_a_wrong_shape_says_which_shape() -> None:
    with pytest.raises(ValueError, match=r"Sequential does not take inputs of shape \(N, 5\)"):
        Sequential(Linear(4, 3)).summary((5,))
