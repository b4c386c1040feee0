"""NaN and Inf never reach a checkpoint, and a checkpoint holding them never loads (issue 15,
item 3): the guard also stops an update that overflows from finite gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handgrad import MSELoss
from handgrad.optim.optimizers import SGD
from handgrad.train import checkpoint as ck
from handgrad.train.callbacks import Checkpointer, NonFiniteError, NonFiniteGuard
from handgrad.train.callbacks.metrics import Metrics
from handgrad.train.learner import Callback, Learner

from support import run_cli
from training_helpers import SeededLoader, regression_data, small_net


class HugeGradient(Callback):
    """At step ``at``, a finite gradient and a learning rate whose product overflows float32."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_backward(self, learn: Learner) -> None:
        if learn.step + 1 == self.at:
            learn.model.layers[0].bias.g.fill_(1e30)
            learn.opt.lr = 1e10  # both finite; their product is not


def learner(folder: Path, *callbacks: Callback) -> Learner:
    """An SGD learner that saves its checkpoints in ``folder``."""
    x, y = regression_data(32)
    net = small_net()
    callbacks = (Metrics(), *callbacks, NonFiniteGuard(), Checkpointer(folder, {"model": {}}))
    opt = SGD(net.parameters(), 1e-3)
    return Learner(net, MSELoss(), opt, SeededLoader(x, y, 8), SeededLoader(x, y, 8), callbacks)


@pytest.mark.parametrize("bad_step", [1, 3, 4])  # 4 steps an epoch: the last one is 4
def test_an_update_that_overflows_stops_training_before_anything_is_saved(
    tmp_path: Path, bad_step: int
) -> None:
    learn = learner(tmp_path, HugeGradient(bad_step))
    with pytest.raises(NonFiniteError) as err:
        learn.fit(2)
    msg = str(err.value)
    assert msg.startswith(f"step {bad_step} (epoch 1): the update made layers.0.bias non-finite")
    assert "from a finite loss and finite gradients" in msg and "\n" not in msg
    assert "no parameter was updated" not in msg  # the update was made, and said so
    assert list(tmp_path.iterdir()) == []  # no checkpoint holds the non-finite weights


def test_the_shipped_case_is_one_line_and_writes_no_checkpoint(tmp_path: Path) -> None:
    args = ("--model", "lesson", "--opt", "sgd", "--lr", "1e38", "--schedule", "constant")
    result = run_cli("train", *args, "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"))
    assert result.status == 2, result.err
    assert "the update made layers.0.weight non-finite" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # not even an empty run folder


def test_commands_refuse_a_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    train = ("train", "--hidden", "8", "--bs", "1000", "--quiet", "--threads", "1")
    assert run_cli(*train, "--epochs", "2", "--stop-after", "1", "--out", str(tmp_path)).status == 0
    for name in ("best", "last"):
        old = ck.load_checkpoint(tmp_path / name)
        tensors = dict(old.tensors)
        tensors["model.layers.0.weight"] = tensors["model.layers.0.weight"].clone()
        tensors["model.layers.0.weight"][0, 0] = torch.nan
        header = ("format", "id", "weights", "weights_sha256")
        ck.save_checkpoint(
            tmp_path / name, tensors, {k: v for k, v in old.info.items() if k not in header}
        )
    for argv in (
        ("evaluate", str(tmp_path / "best.safetensors")),
        ("train", "--resume", str(tmp_path / "last.safetensors"), "--quiet"),
    ):
        result = run_cli(*argv)
        assert result.status == 2, result.err
        assert "hold NaN/Inf (first model.layers.0.weight)" in result.err
        assert len(result.err.strip().splitlines()) == 1
