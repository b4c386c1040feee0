"""Per-layer statistics from hooks: exact values on a hand-computed example, batch counting,
hooks that see every layer, the Learner callbacks and dead units."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Sequential
from handgrad.train.stats import (
    ActivationStats,
    GradientStats,
    StatsHooks,
    dead_units,
    nice_ceil,
    summarize,
)


def tiny() -> Sequential:
    """Linear(2, 2) with W = [[1, -1], [0, 1]], b = [0, 0.5], then ReLU."""
    lin = Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.5]))
    return Sequential(lin, ReLU())


X = torch.tensor([[1.0, -1.0], [2.0, 0.0]], dtype=torch.float64)
G = torch.tensor([[1.0, 3.0], [-2.0, 4.0]], dtype=torch.float64)  # dL/d(ReLU output)


def test_statistics_match_a_hand_computed_example() -> None:
    model = tiny()
    with StatsHooks(model, bins=10) as hooks:
        model(X)
        model.backward(G)
    act, grad = hooks.activations, hooks.gradients
    assert list(act) == ["layers.0", "layers.1"] == list(grad)

    # Linear output: x @ W + b = [[1, -1.5], [2, -1.5]].
    lin = act["layers.0"]
    assert lin.kind == "Linear" and lin.steps.tolist() == [0]
    assert lin.mean.item() == pytest.approx(0.0)
    assert lin.std.item() == pytest.approx(math.sqrt(9.5 / 4))
    assert lin.near_zero.item() == 0.0
    # max |y| = 2 -> R = nice_ceil(8) = 10; negatives present -> [-10, 10] in bins of width 2:
    # -1.5 twice in [-2, 0), 1 in [0, 2), 2 in [2, 4).
    assert lin.edges.tolist() == pytest.approx(list(range(-10, 11, 2)))
    assert lin.hist[0].tolist() == [0, 0, 0, 0, 2, 1, 1, 0, 0, 0]

    # ReLU output: [[1, 0], [2, 0]].
    relu = act["layers.1"]
    assert relu.mean.item() == pytest.approx(0.75)
    assert relu.std.item() == pytest.approx(math.sqrt(0.6875))
    assert relu.near_zero.item() == 0.5
    # Non-negative -> [0, 10] in bins of 1: two zeros in [0, 1), 1 in [1, 2), 2 in [2, 3).
    assert relu.edges[0].item() == 0.0 and relu.edges[-1].item() == 10.0
    assert relu.hist[0].tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 0, 0]

    # Gradient at the ReLU output is G itself.
    g_relu = grad["layers.1"]
    assert g_relu.mean.item() == pytest.approx(1.5)
    assert g_relu.std.item() == pytest.approx(math.sqrt(5.25))
    assert g_relu.near_zero.item() == 0.0
    # Edges over log10 |g| from floor(log10 1) - 4 = -4 to ceil(log10 4) + 2 = 3, bins of 0.7:
    # log10 1 = 0 falls in [-0.5, 0.2); log10 2, 3, 4 = 0.30, 0.48, 0.60 in [0.2, 0.9).
    assert g_relu.edges[0].item() == -4.0 and g_relu.edges[-1].item() == 3.0
    assert g_relu.hist[0].tolist() == [0, 0, 0, 0, 0, 1, 3, 0, 0, 0]

    # Gradient at the Linear output: G masked by the ReLU, [[1, 0], [-2, 0]].
    g_lin = grad["layers.0"]
    assert g_lin.mean.item() == pytest.approx(-0.25)
    assert g_lin.std.item() == pytest.approx(math.sqrt(1.1875))
    assert g_lin.near_zero.item() == 0.5
    # The two exact zeros are left out; log10 1 = 0 and log10 2 = 0.30 (edges -4 to 3 again).
    assert g_lin.hist[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]


def test_summarize_clamps_out_of_range_values_into_the_edge_bins() -> None:
    edges = torch.linspace(0, 4, 5, dtype=torch.float64)
    row, hist = summarize(torch.tensor([-3.0, 0.5, 9.0]), edges, threshold=1.0, log_scale=False)
    assert hist.tolist() == [2, 0, 0, 1]
    assert row[2].item() == pytest.approx(1 / 3)
    # A diverged training step (NaN, inf) must not break the hook: NaN is not binned.
    row, hist = summarize(
        torch.tensor([math.nan, math.inf, 0.0, 1.0]), edges, threshold=1.0, log_scale=True
    )
    assert hist.tolist() == [1, 0, 0, 1] and math.isnan(row[0].item())  # log10 1 = 0, inf


@pytest.mark.parametrize(
    ("v", "want"), [(4.0, 5.0), (0.03, 0.05), (2.0, 2.0), (2.1, 2.5), (7.0, 10.0), (0.0, 1.0)]
)
def test_nice_ceil(v: float, want: float) -> None:
    assert nice_ceil(v) == pytest.approx(want)


def _train(model, hooks_every: int, batches: int, gen: torch.Generator) -> StatsHooks:
    loss_fn = MSELoss()
    with StatsHooks(model, every=hooks_every) as hooks:
        for _ in range(batches):
            x = torch.randn(8, 6, generator=gen)
            loss_fn(model(x), torch.randn(8, 3, generator=gen))
            model.backward(loss_fn.backward()[0])
            model.eval()
            model(x)  # evaluation forwards are neither counted nor recorded
            model.train()
    return hooks


def test_every_n_batches_and_only_training_batches(gen) -> None:
    model = build_model("mlp", in_features=6, n_classes=3, hidden=(5,), generator=gen)
    hooks = _train(model, hooks_every=3, batches=7, gen=gen)
    assert hooks.batches == 7
    for stats in (*hooks.activations.values(), *hooks.gradients.values()):
        assert stats.steps.tolist() == [0, 3, 6]
        assert stats.hist.shape == (3, 40) and stats.mean.shape == (3,)
    # Removed hooks record nothing more.
    model(torch.randn(8, 6, generator=gen))
    assert hooks.batches == 7


def test_hooks_see_every_layer_output_and_its_autograd_gradient(gen) -> None:
    model = build_model("mlp", in_features=6, n_classes=3, hidden=(5, 4), generator=gen).double()
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    seen_out, seen_in, seen_dout = {}, {}, {}
    leaves = [(n, m) for n, m in model.named_modules() if n]
    for name, m in leaves:
        m.register_forward_hook(
            lambda m, args, out, name=name: (
                seen_in.__setitem__(name, args[0]),
                seen_out.__setitem__(name, out),
            )
        )
        m.register_backward_hook(lambda m, dout, g, name=name: seen_dout.__setitem__(name, dout))
    out = model(x)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    model.backward(dout)

    # The same computation with autograd, keeping every intermediate output's gradient.
    h, ref_out = x, {}
    for name, m in leaves:
        assert torch.equal(seen_in[name], h.detach())
        if isinstance(m, Linear):
            h = h @ m.weight.detach().requires_grad_() + m.bias.detach()
        else:
            h = h.clamp_min(0)
        h.retain_grad()
        ref_out[name] = h
    (h * dout).sum().backward()
    assert set(seen_dout) == {n for n, _ in leaves}
    for name, _ in leaves:
        torch.testing.assert_close(seen_out[name], ref_out[name].detach())
        torch.testing.assert_close(seen_dout[name], ref_out[name].grad)


def test_callbacks_register_for_the_fit_and_remove_after(gen) -> None:
    model = build_model("mlp", in_features=6, n_classes=3, hidden=(5,), generator=gen)
    acts, grads = ActivationStats(every=2), GradientStats(every=2)
    learn = SimpleNamespace(model=model)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        _ = acts.stats
    for cb in (acts, grads):
        cb.before_fit(learn)
    loss_fn = MSELoss()
    for i in range(5):
        if i in (0, 3):  # epochs of 3 and 2 batches
            for cb in (acts, grads):
                cb.before_epoch(SimpleNamespace(model=model, training=True))
        loss_fn(model(torch.randn(4, 6, generator=gen)), torch.zeros(4, 3))
        model.backward(loss_fn.backward()[0])
    for cb in (acts, grads):
        cb.after_fit(learn)
    model(torch.randn(4, 6, generator=gen))  # after the fit: not recorded
    assert list(acts.stats) == ["layers.0", "layers.1", "layers.2"]
    for cb, what in ((acts, "activation"), (grads, "gradient")):
        assert all(s.what == what and s.steps.tolist() == [0, 2, 4] for s in cb.stats.values())
        assert all(s.epoch_starts == (3,) for s in cb.stats.values())
    assert acts.hooks.gradients == {} and grads.hooks.activations == {}


def test_dead_units_counts_units_never_positive() -> None:
    lin = Linear(2, 3, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
    model = Sequential(lin, ReLU())
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.2, 0.1]], dtype=torch.float64)
    (report,) = dead_units(model, x, batch_size=2)
    assert (report.name, report.units, report.dead) == ("layers.1", 3, 1)
    assert report.fraction == pytest.approx(1 / 3)
    assert model.training  # the mode is restored


def test_bad_arguments_are_errors(gen) -> None:
    model = build_model("mlp", in_features=6, n_classes=3, hidden=(5,), generator=gen)
    with pytest.raises(ValueError, match="every"):
        StatsHooks(model, every=0)
    with pytest.raises(ValueError, match="every"):
        ActivationStats(every=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_statistics_on_cuda_match_the_cpu() -> None:
    results = []
    for device in ("cpu", "cuda"):
        model = tiny().to(device)
        with StatsHooks(model, bins=10) as hooks:
            model(X.to(device))
            model.backward(G.to(device))
        results.append((hooks.activations, hooks.gradients))
    for cpu, cuda in zip(*results, strict=True):
        for name in cpu:
            for field in ("mean", "std", "near_zero", "hist"):
                torch.testing.assert_close(getattr(cuda[name], field), getattr(cpu[name], field))
