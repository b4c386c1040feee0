"""Subnormals as a policy: ``fit`` flushes them on the CPU (every thread PyTorch computes with),
``keep`` keeps them, and whatever was in force before comes back, however ``fit`` ends."""

from __future__ import annotations

import pytest
import torch

from handgrad import MSELoss
from handgrad.optim import SGD
from handgrad.train.learner import Callback, Learner
from handgrad.train.subnormals import flushing, set_flush, subnormal_policy

from training_helpers import SeededLoader, regression_data, small_net

TINY = 2.0**-126  # the smallest normal float32: half of it is subnormal


def subnormals_survive(n: int = 1) -> int:
    """How many of ``n`` halved smallest-normal float32s stay nonzero (big ``n``: the work is
    split between PyTorch's threads)."""
    return int(((torch.full((n,), TINY) * 0.5) != 0).sum())


@pytest.fixture(autouse=True)
def ieee_around_each_test():
    """Every test starts and ends with IEEE subnormals (the process default)."""
    set_flush(False)
    yield
    set_flush(False)


class Observe(Callback):
    """Records, inside a training step, whether a subnormal computed there survives."""

    def __init__(self, raise_in_step: bool = False) -> None:
        self.seen: list[int] = []
        self.raise_in_step = raise_in_step

    def after_backward(self, learn: Learner) -> None:
        self.seen.append(subnormals_survive())
        if self.raise_in_step:
            raise RuntimeError("boom")


def learner(**kwargs) -> tuple[Learner, Observe]:
    x, y = regression_data()
    model = small_net()
    obs = Observe(kwargs.pop("raise_in_step", False))
    learn = Learner(
        model, MSELoss(), SGD(model.parameters(), lr=0.01), SeededLoader(x, y, 32),
        callbacks=[obs], quiet=True, **kwargs,
    )  # fmt: skip
    return learn, obs


def test_fit_flushes_by_default_and_restores_afterwards() -> None:
    assert subnormals_survive() == 1 and not flushing()
    learn, obs = learner()
    learn.fit(1)
    assert obs.seen and set(obs.seen) == {0}  # flushed in every step
    assert subnormals_survive() == 1 and not flushing()


def test_keep_trains_with_ieee_subnormals() -> None:
    learn, obs = learner(subnormals="keep")
    learn.fit(1)
    assert set(obs.seen) == {1}


def test_the_policy_is_restored_after_an_exception() -> None:
    learn, obs = learner(raise_in_step=True)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1)
    assert obs.seen == [0] and subnormals_survive() == 1


def test_a_flushing_caller_keeps_flushing_after_a_keep_fit() -> None:
    set_flush(True)
    learn, obs = learner(subnormals="keep")
    learn.fit(1)
    assert set(obs.seen) == {1} and flushing()


def test_every_intra_op_thread_flushes() -> None:
    """``torch.set_flush_denormal`` alone reaches the calling thread only: with two threads
    half of a large product's subnormals would survive."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n = 1 << 20  # far above PyTorch's grain size: both threads take a share
        assert subnormals_survive(n) == n
        with subnormal_policy("flush"):
            assert subnormals_survive(n) == 0
            a = torch.full((64, 64), 2.0**-70)  # products of 2**-140: subnormal
            assert int((a @ a != 0).sum()) == 0
        assert subnormals_survive(n) == n
    finally:
        torch.set_num_threads(threads)


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="subnormals='ieee': choose one of flush, keep"):
        learner(subnormals="ieee")
