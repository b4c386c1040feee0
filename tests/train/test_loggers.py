"""Loggers: the history as a CSV file rewritten whole each epoch, and TensorBoard scalars
(through a stand-in ``torch.utils.tensorboard``: the package is not installed here)."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

from handgrad import HandgradError, MSELoss
from handgrad.train.callbacks import CSVLogger, TensorBoardLogger, make_loggers
from handgrad.train.learner import CancelFitException, Learner

from training_helpers import MomentumSGD, SeededLoader, regression_data, small_net


def learner(*callbacks) -> Learner:
    x, y = regression_data(16)
    net = small_net()
    valid = SeededLoader(*regression_data(8, seed=1), 4)
    opt = MomentumSGD(net.parameters(), 0.01)
    return Learner(net, MSELoss(), opt, SeededLoader(x, y, 4), valid, callbacks, quiet=True)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_has_one_row_per_epoch_matching_the_history(tmp_path: Path) -> None:
    learn = learner(CSVLogger(tmp_path / "history.csv"))
    learn.fit(3)
    rows = read_csv(tmp_path / "history.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "lr", "seconds"]
    assert [float(r["valid_loss"]) for r in rows] == [
        h["valid_loss"] for h in learn.recorder.history
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]  # no temporary file left


def test_csv_is_complete_after_every_epoch_even_when_the_run_stops(tmp_path: Path) -> None:
    class StopAtSecond:
        order, name = 60, None

        def after_epoch(self, learn) -> None:
            if learn.last_pass and learn.epoch == 1:
                raise CancelFitException()

    learner(CSVLogger(tmp_path / "h.csv"), StopAtSecond()).fit(5)
    assert [r["epoch"] for r in read_csv(tmp_path / "h.csv")] == ["1", "2"]


class FakeWriter:
    instances: ClassVar[list[FakeWriter]] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_each_epochs_scalars(tmp_path: Path, monkeypatch) -> None:
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.instances = []
    learn = learner(*make_loggers("tensorboard", tmp_path))
    learn.fit(2)
    (writer,) = FakeWriter.instances
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    losses = [(v, step) for tag, v, step in writer.scalars if tag == "valid_loss"]
    assert losses == [(row["valid_loss"], row["epoch"]) for row in learn.recorder.history]
    assert {tag for tag, _, _ in writer.scalars} == {"train_loss", "valid_loss", "lr", "seconds"}


def test_tensorboard_without_the_package_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(HandgradError, match="tensorboard package is not installed; pip install"):
        TensorBoardLogger("tb")


def test_make_loggers_names_the_unknown_logger(tmp_path: Path) -> None:
    assert [type(cb).__name__ for cb in make_loggers(" csv, ", tmp_path)] == ["CSVLogger"]
    assert make_loggers("", tmp_path) == []
    with pytest.raises(HandgradError, match="unknown logger wandb; choose from csv, tensorboard"):
        make_loggers("csv,wandb", tmp_path)
