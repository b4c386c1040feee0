"""The learner's default reporting: ``ProgressPrinter`` writes plain epoch lines, rewrites a
status line in place on a terminal, and stays silent on every rank but 0."""

from __future__ import annotations

import io

import pytest
import torch

from handgrad import MSELoss
from handgrad.train.learner import Learner
from handgrad.train.reporting import ProgressPrinter

from training_helpers import MomentumSGD, SeededLoader, regression_data, small_net


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def fit(printer: ProgressPrinter, epochs: int = 2) -> Learner:
    x, y = regression_data(16)
    net = small_net()
    learn = Learner(
        net, MSELoss(), MomentumSGD(net.parameters(), 0.01), SeededLoader(x, y, 4),
        SeededLoader(*regression_data(8, seed=1), 4), [printer],
    )  # fmt: skip
    learn.fit(epochs)
    return learn


def test_a_plain_stream_gets_one_line_per_epoch_and_no_status() -> None:
    out = io.StringIO()
    fit(ProgressPrinter(out, refresh=0.0))
    text = out.getvalue()
    assert "\r" not in text
    assert [line.split("  ")[0] for line in text.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_a_terminal_gets_a_status_line_rewritten_and_cleared() -> None:
    out = Terminal()
    fit(ProgressPrinter(out, refresh=0.0), epochs=1)
    text = out.getvalue()
    assert "\repoch 1/1 train 4/4  loss " in text and "\repoch 1/1 valid 2/2" in text
    status, _, line = text.rpartition("\r")  # the last status was cleared before the line
    assert status.endswith("\r" + " " * len("epoch 1/1 valid 2/2"))
    assert line.startswith("epoch 1/1  train_loss") and line.endswith("s\n")


def test_only_rank_0_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    out = Terminal()
    learn = fit(ProgressPrinter(out, refresh=0.0), epochs=1)
    assert out.getvalue() == "" and len(learn.recorder.history) == 1


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_smoothed_train_loss_is_labelled_as_such(smoothing: float) -> None:
    """With label smoothing the train loss is not on valid_loss's footing: the line says so."""
    from handgrad import CrossEntropyLoss, Linear
    from handgrad.train.callbacks import ValidLoss

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    net = Linear(6, 3)
    out = io.StringIO()
    learn = Learner(
        net, CrossEntropyLoss(label_smoothing=smoothing), MomentumSGD(net.parameters(), 0.01),
        SeededLoader(x, y, 4), SeededLoader(x, y, 8),
        [ProgressPrinter(out), ValidLoss(CrossEntropyLoss())],
    )  # fmt: skip
    learn.fit(1)
    line = out.getvalue()
    assert ("train_loss(smoothed) " in line) == bool(smoothing)
    assert ("train_loss " in line) == (not smoothing)
    assert "valid_loss " in line
