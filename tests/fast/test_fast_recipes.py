"""Every MLP the fast path covers trains to the readable path's weights, with every optimizer
fused into the compiled step (issue 16): activation x optimizer x dropout/batch norm.

Tiny shapes, float64, several steps with a learning rate that changes between steps (as a
schedule does); weights, optimizer state and step counts compared with the readable
``model(x) -> loss -> backward -> opt.step()`` loop, whose rules are themselves checked against
``torch.optim`` in tests/optim.
"""

from __future__ import annotations

import pytest
import torch

from handgrad import fast
from handgrad.fast import FastStep
from handgrad.nn.layers import (
    GELU,
    BatchNorm1d,
    Dropout,
    GeneralRelu,
    LeakyReLU,
    Linear,
    ReLU,
    Sigmoid,
    SiLU,
    Tanh,
)
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.module import Sequential
from handgrad.optim.optimizers import SGD, Adam, AdamW

pytestmark = [pytest.mark.slow, pytest.mark.compiled]  # builds the C++ extension on first use

ACTIVATIONS = {
    "relu": ReLU,
    "leaky": lambda: LeakyReLU(0.1),
    "general": lambda: GeneralRelu(leak=0.1, sub=0.4, maxv=1.5),
    "general-plain": GeneralRelu,
    "gelu": GELU,
    "gelu-tanh": lambda: GELU("tanh"),
    "silu": SiLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
}
OPTIMIZERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd-wd": lambda ps: SGD(ps, lr=0.1, weight_decay=0.01),
    "momentum": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda ps: Adam(ps, lr=1e-2, weight_decay=0.01),
    "adamw": lambda ps: AdamW(ps, lr=1e-2, betas=(0.8, 0.99)),
}
EXTRAS = ("plain", "dropout", "batchnorm")
STEPS, BATCH, N_IN, N_OUT = 4, 16, 12, 5


@pytest.fixture(scope="module")
def compiled() -> None:
    ok, why = fast.fast_path_status()
    if not ok:
        pytest.skip(f"the fast path cannot be built here: {why}")


def make_model(act: str, extra: str, seed: int = 0) -> Sequential:
    """12 -> 9 -> 7 -> 5 with the activation after each hidden Linear, and a Dropout (its own
    generator, seeded) or a BatchNorm1d (momentum 0.1, then cumulative) in each block."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    width = N_IN
    for i, h in enumerate((9, 7)):
        # (no bias before a batch norm: its gradient is 0 up to rounding, which Adam would
        # blow up to full steps of noise)
        layers.append(Linear(width, h, bias=extra != "batchnorm", generator=gen))
        if extra == "batchnorm":
            layers.append(BatchNorm1d(h, momentum=None if i else 0.1))
        layers.append(ACTIVATIONS[act]())
        if extra == "dropout":
            layers.append(Dropout(0.3, generator=torch.Generator().manual_seed(10 + i)))
        width = h
    layers.append(Linear(width, N_OUT, nonlinearity="linear", generator=gen))
    return Sequential(*layers).double()


def data(regression: bool):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, N_IN, generator=g, dtype=torch.float64)
        y = (
            torch.randn(BATCH, N_OUT, generator=g, dtype=torch.float64)
            if regression
            else torch.randint(0, N_OUT, (BATCH,), generator=g)
        )
        out.append((x, y))
    return out


def run(act: str, opt_name: str, extra: str, loss: str, use_fast: bool):
    model = make_model(act, extra)
    loss_fn = MSELoss() if loss == "mse" else CrossEntropyLoss(0.1 if loss == "ce-smooth" else 0.0)
    opt = OPTIMIZERS[opt_name](model.parameters())
    step = FastStep(model, loss_fn, opt) if use_fast else None
    if step is not None:
        assert step.fused, step.reason
    losses = []
    for i, (x, y) in enumerate(data(loss == "mse")):
        opt.lr = opt.lr * (1.0 + 0.5 * (i % 2))  # a schedule between steps
        if step is not None:
            losses.append(step(x, y)[1])
            assert all(p.g is None for p in model.parameters())
        else:
            losses.append(loss_fn(model(x), y))
            model.backward(loss_fn.backward()[0])
            opt.step()
            opt.zero_grad()
    state = {k: v for k, v in model.state_dict().items()}
    return torch.stack(losses), state, opt


def assert_same(act: str, opt_name: str, extra: str, loss: str) -> None:
    l0, s0, o0 = run(act, opt_name, extra, loss, use_fast=False)
    l1, s1, o1 = run(act, opt_name, extra, loss, use_fast=True)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(l1, l0, **tol)
    assert s1.keys() == s0.keys()
    for k in s0:  # weights, biases, batch norm's running statistics and batch counts
        torch.testing.assert_close(s1[k], s0[k], **tol, msg=f"{k} differs")
    assert (o1.step_count, o1.param_steps) == (o0.step_count, o0.param_steps)
    t0, m0 = o0.state_dict()
    t1, m1 = o1.state_dict()
    assert t1.keys() == t0.keys() and m1 == m0
    for k in t0:  # momentum buffers, Adam's moments
        torch.testing.assert_close(t1[k], t0[k], **tol, msg=f"{k} differs")


@pytest.mark.parametrize("extra", EXTRAS)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_fused_step_equals_the_readable_path(compiled, act, opt_name, extra) -> None:
    assert_same(act, opt_name, extra, "ce")


@pytest.mark.parametrize("loss", ["ce-smooth", "mse"])
@pytest.mark.parametrize("opt_name", ["momentum", "adamw"])
def test_each_loss_with_dropout_and_batchnorm(compiled, loss, opt_name) -> None:
    assert_same("gelu", opt_name, "dropout", loss)
    assert_same("silu", opt_name, "batchnorm", loss)


def test_the_relu_adamw_recipe_in_float32_is_close(compiled) -> None:
    """The ``mlp`` recipe's combination in float32 (the dtype it trains in): to rounding."""
    out = []
    for use_fast in (False, True):
        gen = torch.Generator().manual_seed(2)
        model = Sequential(Linear(64, 48, generator=gen), ReLU(), Linear(48, 10, generator=gen))
        loss_fn = CrossEntropyLoss(0.1)
        opt = AdamW(model.parameters(), lr=3e-3)
        step = FastStep(model, loss_fn, opt) if use_fast else None
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            x, y = torch.rand(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
            if step is not None:
                step(x, y)
            else:
                loss_fn(model(x), y)
                model.backward(loss_fn.backward()[0])
                opt.step()
                opt.zero_grad()
        out.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_predict_with_dropout_and_batchnorm_is_evaluation(compiled) -> None:
    model = make_model("tanh", "batchnorm")
    step = FastStep(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.1))
    for x, y in data(False):  # running statistics move away from 0 and 1
        step(x, y)
    x = data(False)[0][0]
    torch.testing.assert_close(step.predict(x), model.eval()(x), rtol=1e-12, atol=1e-12)
    model.train()
    dropped = make_model("relu", "dropout")
    torch.testing.assert_close(FastStep(dropped).predict(x), dropped.eval()(x))


def test_mish_is_not_supported_and_says_so(compiled) -> None:
    from handgrad.nn.layers import Mish

    step = FastStep(Sequential(Linear(4, 3), Mish(), Linear(3, 2)), CrossEntropyLoss())
    assert not step.compiled and "layer 1 (Mish) is not supported" in step.reason
