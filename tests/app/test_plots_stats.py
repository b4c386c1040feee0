"""Every statistics plot writes a non-empty PNG of the size its docstring promises."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from handgrad.app.plots.base import DPI
from handgrad.app.plots.stats import (
    confident_mistakes,
    hist_figure_size,
    mistakes_figure_size,
    plot_confident_mistakes,
    plot_dead_units,
    plot_histograms,
    plot_layer_stats,
    plot_stats_comparison,
)
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.models import build_model
from handgrad.train.stats import StatsHooks, dead_units


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 5_000, f"{path} is nearly empty ({len(data)} bytes)"
    return struct.unpack(">II", data[16:24])


def assert_png(path: Path, inches: tuple[float, float]) -> None:
    """The PNG is ``inches`` at the plots' DPI, give or take what a tight bounding box trims
    from the margins or adds for a legend placed outside the axes."""
    w, h = png_size(path)
    want_w, want_h = inches[0] * DPI, inches[1] * DPI
    assert 0.85 * want_w <= w <= 1.2 * want_w, (w, want_w)
    assert 0.85 * want_h <= h <= 1.2 * want_h, (h, want_h)


@pytest.fixture(scope="module")
def recorded() -> tuple[StatsHooks, object]:
    gen = torch.Generator().manual_seed(0)
    model = build_model("mlp", in_features=12, n_classes=4, hidden=(16, 8), generator=gen)
    loss_fn = MSELoss()
    with StatsHooks(model, every=2) as hooks:
        for _ in range(12):
            x = torch.randn(32, 12, generator=gen)
            loss_fn(model(x), torch.randn(32, 4, generator=gen))
            model.backward(loss_fn.backward()[0])
            for p in model.parameters():
                p.data -= 0.05 * p.g
                p.g = None
    return hooks, model


def test_layer_stats_for_activations_and_gradients(recorded, tmp_path) -> None:
    hooks, _ = recorded
    assert_png(plot_layer_stats(hooks.activations, tmp_path / "a.png"), (15, 4.6))
    assert_png(plot_layer_stats(hooks.gradients, tmp_path / "g.png"), (15, 4.6))


def test_histograms_for_activations_and_gradients(recorded, tmp_path) -> None:
    hooks, _ = recorded
    n = len(hooks.activations)  # 5 layers: a two-column grid of three rows
    assert hist_figure_size(n) == (11.0, 2.0 * 3 + 0.9)
    assert_png(plot_histograms(hooks.activations, tmp_path / "a.png"), hist_figure_size(n))
    assert_png(plot_histograms(hooks.gradients, tmp_path / "g.png"), hist_figure_size(n))


def test_stats_comparison(recorded, tmp_path) -> None:
    hooks, _ = recorded
    runs = {"one": hooks.activations, "two": hooks.activations}
    assert_png(plot_stats_comparison(runs, tmp_path / "c.png"), (12, 4.6))
    with pytest.raises(ValueError, match="quantity"):
        plot_stats_comparison(runs, tmp_path / "x.png", quantity="median")


def test_dead_units_chart(recorded, tmp_path) -> None:
    _, model = recorded
    report = dead_units(model, torch.randn(64, 12, generator=torch.Generator().manual_seed(1)))
    out = plot_dead_units({"at init": report, "trained": report}, tmp_path / "d.png")
    assert_png(out, (8, 4.6))


def test_confident_mistakes_picks_the_most_confident_wrong_rows(tmp_path) -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 9.0], [3.0, 0.0]])
    y = torch.tensor([1, 1, 0, 0])  # rows 0 and 2 are wrong; row 2 more confidently
    idx, pred, conf = confident_mistakes(logits, y)
    assert idx.tolist() == [2, 0] and pred.tolist() == [1, 0]
    assert conf[0] > conf[1] > 0.99

    images = torch.rand(4, 784)
    out = plot_confident_mistakes(images, y, logits, tmp_path / "m.png", classes=["cat", "dog"])
    assert_png(out, mistakes_figure_size(2))


def test_confident_mistakes_without_mistakes_and_with_bad_shapes(tmp_path) -> None:
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    assert_png(
        plot_confident_mistakes(torch.rand(1, 784), y, logits, tmp_path / "m.png"),
        mistakes_figure_size(0),
    )
    with pytest.raises(ValueError, match="one of each per example"):
        plot_confident_mistakes(torch.rand(2, 784), y, logits, tmp_path / "x.png")


def test_empty_statistics_are_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no layer statistics"):
        plot_layer_stats({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
