"""The compiled fast path gives the readable path's numbers, and falls back where it must."""

from __future__ import annotations

import pytest
import torch

from handgrad import fast
from handgrad._build import Build
from handgrad.errors import HandgradError
from handgrad.fast import FastStep
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.lesson import Lin
from handgrad.nn.models import build_model
from handgrad.nn.module import Module, Sequential
from handgrad.optim.optimizers import SGD, Adam

pytestmark = pytest.mark.slow  # the first run builds the C++ extension (then it is cached)


@pytest.fixture(scope="module")
def compiled() -> None:
    ok, why = fast.fast_path_status()
    if not ok:
        pytest.skip(f"the fast path cannot be built here: {why}")


def readable_step(model: Module, loss_fn: Module, x, y, input_grad=False):
    loss = loss_fn(model(x), y)
    dx = model.backward(loss_fn.backward()[0], need_input_grad=input_grad)
    return loss, dx


def train(model, loss_fn, opt, batches, use_fast: bool):
    step = FastStep(model, loss_fn) if use_fast else None
    losses = []
    for xb, yb in batches:
        if step is not None:
            assert step.compiled, step.reason
            losses.append(step(xb, yb)[1])
        else:
            losses.append(readable_step(model, loss_fn, xb, yb)[0])
        opt.step()
        opt.zero_grad()
    return torch.stack(losses)


def batches(n_batches: int, bs: int, n_classes: int, dtype, regression=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        x = torch.rand(bs, 784, generator=g, dtype=dtype)
        y = torch.randint(0, n_classes, (bs,), generator=g)
        out.append((x, y.to(dtype) if regression else y))
    return out


@pytest.mark.parametrize(
    ("name", "kw", "opt", "loss", "dtype"),
    [
        ("lesson", {}, "sgd", "mse", torch.float64),
        ("mlp", {"hidden": (50,)}, "sgd", "ce", torch.float64),
        ("mlp", {"hidden": (256, 128)}, "sgd", "ce", torch.float32),
        ("mlp", {"hidden": (256, 128)}, "adam", "ce", torch.float64),
        ("mlp", {"hidden": (32,)}, "adam", "ce-smooth", torch.float64),
    ],
)
def test_same_weights_after_n_steps(compiled, name, kw, opt, loss, dtype) -> None:
    """The fast path and the readable path train the same model to the same weights: to 1e-10
    in float64; in float32 to rounding (ATen's one-kernel log-softmax rounds differently from
    the readable max-shift-log-sum-exp, and Adam would amplify that, so float32 uses SGD)."""
    regression = loss == "mse"
    data = batches(12, 64, 10, dtype, regression)
    results = []
    for use_fast in (False, True):
        model = build_model(name, generator=torch.Generator().manual_seed(1), **kw).to(dtype=dtype)
        loss_fn = MSELoss() if regression else CrossEntropyLoss(0.1 if "smooth" in loss else 0.0)
        params = model.parameters()
        optimizer = SGD(params, lr=0.05) if opt == "sgd" else Adam(params, lr=1e-3)
        losses = train(model, loss_fn, optimizer, data, use_fast)
        results.append((losses, [p.detach().clone() for p in params]))
        assert all(m.pending == 0 for m in [*model.modules(), loss_fn])
    (l0, p0), (l1, p1) = results
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 0}
    torch.testing.assert_close(l1, l0, **tol)
    for a, b in zip(p1, p0, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_input_gradient_no_bias_and_accumulation(compiled) -> None:
    """The lesson's ``Lin`` layers, a bias-free layer, the input's gradient, and ``.g`` that
    already holds a gradient (the framework accumulates; so does the fast path)."""
    g = torch.Generator().manual_seed(3)
    w1, b1, w2 = (torch.randn(s, generator=g, dtype=torch.float64) for s in [(20, 7), (7,), (7, 1)])
    x = torch.randn(16, 20, generator=g, dtype=torch.float64)
    y = torch.randn(16, generator=g, dtype=torch.float64)

    def make():
        last = Linear(7, 1, bias=False).double()
        with torch.no_grad():
            last.weight.copy_(w2)
        return Sequential(Lin(w1.clone(), b1.clone()), ReLU(), last)

    ref_model, fast_model = make(), make()
    for _ in range(2):  # twice without zero_grad: gradients add up
        _, dx_ref = readable_step(ref_model, MSELoss(), x, y, input_grad=True)
        _, _, dx = FastStep(fast_model, MSELoss())(x, y, input_grad=True)
    torch.testing.assert_close(dx, dx_ref)
    for a, b in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a.g, b.g)
    assert fast_model.layers[2].bias is None


def test_unsupported_model_falls_back_with_one_notice(capsys) -> None:
    class Square(Module):
        def forward(self, x):
            return x * x

        def bwd(self, out, x):
            x.g = 2 * x * out.g

    model = Sequential(Linear(784, 8), Square(), Linear(8, 10))
    step = FastStep(model, CrossEntropyLoss())
    assert not step.compiled and "layer 1 (Square)" in step.reason
    x, y = batches(1, 4, 10, torch.float32)[0]
    preds, _, _ = step(x, y)
    assert preds.shape == (4, 10) and model.layers[0].weight.g is not None
    FastStep(model, CrossEntropyLoss())
    err = capsys.readouterr().err
    assert err.count("fast path unavailable") == 1 and "using the Python path" in err


def test_bad_labels_raise_the_readable_error(compiled) -> None:
    model = build_model("mlp", hidden=(8,))
    step = FastStep(model, CrossEntropyLoss())
    x = torch.rand(4, 784)
    with pytest.raises(HandgradError, match=r"labels must be in \[0, 10\)"):
        step(x, torch.tensor([0, 1, 2, 10]))


def test_disabled_by_environment(monkeypatch) -> None:
    monkeypatch.setattr(fast, "_extension", Build(fast._SOURCE, fast._build))
    monkeypatch.setenv("HANDGRAD_FAST", "0")
    ok, why = fast.fast_path_status()
    assert not ok and "HANDGRAD_FAST=0" in why
    step = FastStep(build_model("mlp", hidden=(8,)), CrossEntropyLoss())
    assert not step.compiled


def test_hooks_send_the_step_through_the_readable_path(compiled) -> None:
    model = build_model("mlp", hidden=(8,))
    step = FastStep(model, CrossEntropyLoss())
    seen = []
    model.layers[1].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    x, y = batches(1, 4, 10, torch.float32)[0]
    step(x, y)
    assert seen == [(4, 8)] and model.layers[0].weight.g is not None


def test_predict_matches_the_model_in_eval_mode(compiled) -> None:
    model = build_model("mlp", hidden=(16, 8), generator=torch.Generator().manual_seed(0))
    x = torch.rand(5, 784)
    out = FastStep(model).predict(x)
    assert model.training and all(m.pending == 0 for m in model.modules())
    torch.testing.assert_close(out, model.eval()(x))


def test_input_gradient_buffer_is_reused_only_when_nobody_holds_it(compiled) -> None:
    model = build_model("lesson")
    step = FastStep(model, MSELoss())
    x, y = torch.rand(32, 784), torch.rand(32)
    _, _, kept = step(x, y, input_grad=True)
    first = kept.clone()
    _, _, second = step(2 * x, y, input_grad=True)
    assert second.data_ptr() != kept.data_ptr()  # we still hold `kept`: fresh memory
    torch.testing.assert_close(kept, first)
    view = second[:4]  # a view keeps the storage alive even after `second` is dropped
    del second
    _, _, third = step(x, y, input_grad=True)
    assert third.data_ptr() != view.data_ptr()
    ptr = third.data_ptr()
    del third, view
    _, _, fourth = step(x, y, input_grad=True)
    assert fourth.data_ptr() == ptr  # nobody held it: written again in place
    torch.testing.assert_close(fourth, first)


# ------------------------------------------------------------------- the optimizer folded in
def readable_training(model, loss_fn, opt, data, lrs):
    for (xb, yb), lr in zip(data, lrs, strict=True):
        opt.lr = lr
        readable_step(model, loss_fn, xb, yb)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(
    ("opt_kw", "fused", "loss"),
    [
        ({}, True, "ce"),
        ({"weight_decay": 0.05}, True, "ce-smooth"),
        ({}, True, "mse"),
        ({"momentum": 0.9}, True, "ce"),  # the buffer updated in the same loop as the weight
        ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, True, "ce"),
    ],
)
def test_step_with_optimizer_matches_the_readable_loop(compiled, opt_kw, fused, loss) -> None:
    """``FastStep(model, loss, SGD)`` is a whole training step: forward, backward and the
    update (folded into the weights' GEMMs for plain SGD), to 1e-10 of the readable loop in
    float64, also when a schedule changes the learning rate between steps."""
    regression = loss == "mse"
    data = batches(10, 32, 10, torch.float64, regression)
    lrs = [0.05 * (1 + i % 3) for i in range(len(data))]
    out = []
    for use_fast in (False, True):
        gen = torch.Generator().manual_seed(2)
        model = (
            build_model("lesson", generator=gen)
            if regression
            else build_model("mlp", generator=gen, hidden=(40, 24))
        )
        model = model.to(dtype=torch.float64)
        loss_fn = MSELoss() if regression else CrossEntropyLoss(0.1 if "smooth" in loss else 0.0)
        opt = SGD(model.parameters(), lr=lrs[0], **opt_kw)
        if use_fast:
            step = FastStep(model, loss_fn, opt)
            assert step.fused is fused
            for (xb, yb), lr in zip(data, lrs, strict=True):
                opt.lr = lr
                step(xb, yb)
                assert all(p.g is None for p in model.parameters())  # nothing left behind
        else:
            readable_training(model, loss_fn, opt, data, lrs)
        out.append((model.parameters(), opt.step_count, list(opt.param_steps)))
    (p_ref, count_ref, steps_ref), (p_fast, count, steps) = out
    assert (count, steps) == (count_ref, steps_ref) == (len(data), [len(data)] * len(p_ref))
    for a, b in zip(p_fast, p_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_step_includes_a_gradient_already_accumulated(compiled) -> None:
    """A gradient the caller left in ``p.g`` is part of the update (so that call is not
    fused), exactly as ``opt.step()`` after another backward would use it."""
    (x1, y1), (x2, y2) = batches(2, 16, 10, torch.float64)
    models = [
        build_model("mlp", generator=torch.Generator().manual_seed(4), hidden=(12,)).double()
        for _ in range(2)
    ]
    ref, fast_model = models
    readable_step(ref, CrossEntropyLoss(), x1, y1)
    readable_step(ref, CrossEntropyLoss(), x2, y2)
    opt_ref = SGD(ref.parameters(), lr=0.1)
    opt_ref.step()
    readable_step(fast_model, CrossEntropyLoss(), x1, y1)  # accumulated by hand first
    FastStep(fast_model, CrossEntropyLoss(), SGD(fast_model.parameters(), lr=0.1))(x2, y2)
    for a, b in zip(fast_model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sgd_over_other_parameters_is_not_fused(compiled) -> None:
    model = build_model("mlp", generator=torch.Generator().manual_seed(5), hidden=(8,))
    first_layer_only = SGD(model.layers[0].parameters(), lr=0.1)
    step = FastStep(model, CrossEntropyLoss(), first_layer_only)
    assert step.compiled and not step.fused
    before = [p.detach().clone() for p in model.parameters()]
    step(*batches(1, 8, 10, torch.float32)[0])
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True)]
    assert changed == [True, True, False, False]  # only what the optimizer owns moved


# ------------------------------------------------------------------------------ tall batches
@pytest.mark.parametrize(
    ("loss", "input_grad", "with_opt"),
    [("ce-smooth", False, False), ("ce", True, False), ("mse", True, False), ("ce", False, True)],
)
def test_tall_batch_gives_the_readable_gradients(compiled, loss, input_grad, with_opt):
    """From 4,096 rows the compiled step takes dW as (d^T h)^T and the ATen loss kernels; the
    gradients, the loss, the input gradient and an SGD update still equal the readable
    path's to 1e-10 in float64."""
    regression = loss == "mse"
    ((x, y),) = batches(1, 4096 + 100, 10, torch.float64, regression)
    out = []
    for use_fast in (False, True):
        gen = torch.Generator().manual_seed(6)
        kw = {} if regression else {"hidden": (20,)}
        model = build_model("lesson" if regression else "mlp", generator=gen, **kw).double()
        loss_fn = MSELoss() if regression else CrossEntropyLoss(0.1 if "smooth" in loss else 0.0)
        opt = SGD(model.parameters(), lr=0.1, weight_decay=0.01) if with_opt else None
        if use_fast:
            step = FastStep(model, loss_fn, opt)
            step._python = lambda *a: pytest.fail("the compiled step fell back to Python")
            preds, value, dx = step(x, y, input_grad=input_grad)
        else:
            preds = model(x)
            value = loss_fn(preds, y)
            dx = model.backward(loss_fn.backward()[0], need_input_grad=input_grad)
            if opt is not None:
                opt.step()
                opt.zero_grad()
        grads = [p.g for p in model.parameters()]
        out.append((preds, value, dx, grads, [p.detach().clone() for p in model.parameters()]))
    (p0, l0, dx0, g0, w0), (p1, l1, dx1, g1, w1) = out
    tol = {"rtol": 1e-10, "atol": 1e-13}
    torch.testing.assert_close(p1, p0, **tol)
    torch.testing.assert_close(l1, l0, **tol)
    if input_grad:
        torch.testing.assert_close(dx1, dx0, **tol)
    for a, b in zip(g1 + w1, g0 + w0, strict=True):
        torch.testing.assert_close(a, b, **tol)
