"""Schedules against torch.optim.lr_scheduler, and their shapes."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from handgrad.errors import HandgradError
from handgrad.nn.module import Parameter
from handgrad.optim.optimizers import SGD
from handgrad.optim.schedules import (
    SCHEDULES,
    Constant,
    CosineWarmup,
    OneCycle,
    StepDecay,
    make_schedule,
)


def torch_lrs(make_scheduler, lr: float, n: int) -> list[float]:
    """The learning rate torch uses at steps 0 .. n-1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(
    ("max_lr", "total", "pct", "div", "final_div"),
    [(0.1, 100, 0.25, 25.0, 1e4), (3e-3, 37, 0.3, 10.0, 100.0), (1.0, 10, 0.5, 5.0, 1e3)],
)
def test_onecycle_matches_torch(max_lr, total, pct, div, final_div) -> None:
    ours = OneCycle(max_lr, total, pct_start=pct, div_factor=div, final_div_factor=final_div)
    ref = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lr,
            total_steps=total,
            pct_start=pct,
            anneal_strategy="cos",
            cycle_momentum=False,
            div_factor=div,
            final_div_factor=final_div,
            three_phase=False,
        ),
        max_lr,
        total,
    )
    assert ours.values() == pytest.approx(ref, rel=1e-12, abs=0)


def test_onecycle_shape() -> None:
    s = OneCycle(0.1, 100)
    lrs = s.values()
    peak = lrs.index(max(lrs))
    assert peak == 24 and lrs[peak] == pytest.approx(0.1)  # 25% warm-up, peak at its end
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)
    assert all(a <= b for a, b in pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in pairwise(lrs[peak:]))
    assert s(100) == s(5000) == lrs[-1]  # past the end: the final value
    assert OneCycle(0.1, 4)(0) == 0.1  # one warm-up step: starts at the peak (torch divides by 0)


def hf_cosine(warmup: int, total: int):
    """transformers' get_cosine_schedule_with_warmup as a LambdaLR factor."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@pytest.mark.parametrize(("total", "warmup"), [(100, 10), (50, 0), (7, 3)])
def test_cosine_warmup_matches_lambda_lr(total, warmup) -> None:
    ref = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, hf_cosine(warmup, total)), 0.2, total
    )
    assert CosineWarmup(0.2, total, warmup).values() == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_cosine_warmup_shape() -> None:
    s = CosineWarmup(0.5, 100, 20, final_lr=0.01)
    lrs = [s(i) for i in range(101)]
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.25)  # linear warm-up
    assert max(lrs) == lrs[20] == 0.5  # the peak at the end of warm-up
    assert lrs[60] == pytest.approx((0.5 + 0.01) / 2)  # halfway down the cosine
    assert lrs[100] == pytest.approx(0.01) and s(10**6) == pytest.approx(0.01)
    assert all(a >= b for a, b in pairwise(lrs[20:]))


@pytest.mark.parametrize(("step_size", "gamma"), [(10, 0.1), (3, 0.5), (1, 0.9)])
def test_step_decay_matches_step_lr(step_size, gamma) -> None:
    ref = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma),
        0.3,
        35,
    )
    assert StepDecay(0.3, step_size, gamma).values(35) == pytest.approx(ref, rel=1e-12)


def test_constant() -> None:
    assert Constant(0.05).values(3) == [0.05, 0.05, 0.05]


def test_schedule_drives_an_optimizer() -> None:
    p = Parameter(torch.zeros(1))
    opt = SGD([p], lr=1.0)
    sched = OneCycle(0.1, 10)
    seen = []
    for step in range(10):
        opt.lr = sched(step)
        p.g = torch.ones(1)
        opt.step()
        seen.append(opt.lr)
    assert seen == sched.values()
    torch.testing.assert_close(p.as_subclass(torch.Tensor), torch.tensor([-sum(seen)]))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OneCycle(0.0, 10), "max_lr"),
        (lambda: OneCycle(0.1, 1), "total_steps"),
        (lambda: OneCycle(0.1, 10, pct_start=1.0), "pct_start"),
        (lambda: OneCycle(0.1, 10, pct_start=0.0), "pct_start"),
        (lambda: OneCycle(0.1, 10, div_factor=0.5), "div_factor"),
        (lambda: OneCycle(math.nan, 10), "max_lr"),
        (lambda: CosineWarmup(0.1, 10, 10), "warmup_steps"),
        (lambda: CosineWarmup(0.1, 10, -1), "warmup_steps"),
        (lambda: CosineWarmup(0.1, 10, 2, final_lr=0.2), "final_lr"),
        (lambda: StepDecay(0.1, 0), "step_size"),
        (lambda: StepDecay(0.1, 5, gamma=1.5), "gamma"),
        (lambda: Constant(-1.0), "lr"),
        (lambda: Constant(0.1)(-1), "step"),
        (lambda: Constant(0.1)(1.5), "step"),
    ],
)
def test_bad_arguments(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", SCHEDULES)
def test_make_schedule(name) -> None:
    s = make_schedule(name, 0.1, 90)
    lrs = [s(i) for i in range(90)]
    # (one-cycle peaks between two steps when pct_start * total_steps is fractional, as torch)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and all(v >= 0 for v in lrs)
    expected = {"onecycle": OneCycle, "cosine": CosineWarmup, "step": StepDecay}
    assert isinstance(s, expected.get(name, Constant))
    if name != "constant":
        assert lrs[-1] < 0.1 * 0.2  # it decays


def test_make_schedule_errors_are_one_line_handgrad_errors() -> None:
    with pytest.raises(HandgradError, match="unknown schedule 'linear'; choose one of onecycle"):
        make_schedule("linear", 0.1, 10)
    with pytest.raises(HandgradError, match=r"--schedule onecycle: .*total_steps"):
        make_schedule("onecycle", 0.1, 1)
    assert isinstance(make_schedule("OneCycle", 0.1, 10), OneCycle)
