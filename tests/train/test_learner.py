"""The Learner: event order, cancel semantics, hand-written training, metrics and callbacks."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from handgrad import CrossEntropyLoss, Linear, MSELoss, Sequential
from handgrad.app.progress import Progress
from handgrad.train.callbacks import (
    EarlyStopping,
    LRScheduler,
    Metrics,
    NonFiniteError,
    NonFiniteGuard,
    Recorder,
    lr_find,
)
from handgrad.train.learner import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
)

from training_helpers import MomentumSGD, SeededLoader, regression_data, small_net

BATCH_EVENTS = [
    "before_batch",
    "after_predict",
    "after_loss",
    "after_backward",
    "after_step",
    "after_batch",
    "cleanup_batch",
]
VALID_BATCH = ["before_batch", "after_predict", "after_loss", "after_batch", "cleanup_batch"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second thread costs more in synchronisation than it gains, and on a
    shared machine a two-thread barrier can stall for milliseconds per operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Log(Callback):
    """Records every event it sees as ``(tag, event, training)``."""

    def __init__(self, tag: str, order: int, log: list, raise_at: dict | None = None) -> None:
        self.tag, self.order, self.log, self.raise_at = tag, order, log, raise_at or {}

    def _on(self, event: str, learn: Learner) -> None:
        self.log.append((self.tag, event, learn.training))
        exc = self.raise_at.get((event, learn.epoch, learn.batch_idx, learn.training))
        if exc is not None:
            raise exc()


for _event in EVENTS:
    setattr(Log, _event, lambda self, learn, _e=_event: self._on(_e, learn))


def make_learner(callbacks=(), *, n=8, bs=4, lr=0.05, valid=True) -> Learner:
    x, y = regression_data(n)
    net = small_net()
    train = SeededLoader(x, y, bs, shuffle=True)
    valid_dl = SeededLoader(*regression_data(n // 2, seed=1), bs) if valid else None
    return Learner(net, MSELoss(), MomentumSGD(net.parameters(), lr), train, valid_dl, callbacks)


def events(log: list, tag: str = "a") -> list[str]:
    return [e for t, e, _ in log if t == tag]


def test_events_run_in_order_around_fit_epoch_and_batch() -> None:
    log: list = []
    make_learner([Log("a", 0, log)], n=8, bs=4).fit(1)
    train_epoch = ["before_epoch", *BATCH_EVENTS * 2, "after_epoch", "cleanup_epoch"]
    valid_epoch = ["before_epoch", *VALID_BATCH, "after_epoch", "cleanup_epoch"]
    assert events(log) == ["before_fit", *train_epoch, *valid_epoch, "after_fit", "cleanup_fit"]
    assert [t for _, e, t in log if e == "before_epoch"] == [True, False]


def test_callbacks_run_by_order_then_insertion() -> None:
    log: list = []
    cbs = [Log("late", 5, log), Log("first", -1, log), Log("tie1", 0, log), Log("tie2", 0, log)]
    make_learner(cbs).fit(1)
    tags = [t for t, e, _ in log if e == "before_fit"]
    assert tags == ["first", "tie1", "tie2", "late"]


def test_cancel_batch_before_step_skips_update_and_after_batch() -> None:
    log: list = []
    cancel = {("after_predict", 0, 0, True): CancelBatchException}
    learn = make_learner([Log("a", 0, log, cancel)], n=4, bs=4, valid=False)
    before = [p.clone() for p in learn.model.parameters()]
    learn.fit(1)
    assert events(log)[2:5] == ["before_batch", "after_predict", "cleanup_batch"]
    assert learn.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))
    assert all(p.g is None for p in learn.model.parameters())
    assert learn.model.pending == 0 and all(m.pending == 0 for m in learn.model.modules())


def test_cancel_epoch_skips_rest_of_pass_but_validation_still_runs() -> None:
    log: list = []
    cancel = {("before_batch", 0, 1, True): CancelEpochException}
    learn = make_learner([Log("a", 0, log, cancel)], n=12, bs=4)
    learn.fit(2)
    first_train = events(log)[1 : 2 + len(BATCH_EVENTS) + 3]
    assert first_train[-3:] == ["before_batch", "cleanup_batch", "cleanup_epoch"]
    assert "after_epoch" not in first_train
    assert [t for _, e, t in log if e == "after_epoch"] == [False, True, False]
    assert learn.step == 1 + 3  # epoch 0 stopped after one step; epoch 1 ran all three


def test_cancel_fit_skips_after_fit_runs_cleanup() -> None:
    log: list = []
    cancel = {("after_step", 0, 0, True): CancelFitException}
    learn = make_learner([Log("a", 0, log, cancel)], n=8, bs=4)
    learn.fit(3)
    ev = events(log)
    assert ev[-3:] == ["cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert "after_fit" not in ev and "after_batch" not in ev
    assert learn.step == 1


def test_other_exceptions_propagate_after_cleanup() -> None:
    log: list = []
    boom = {("after_loss", 0, 0, True): KeyError}
    learn = make_learner([Log("a", 0, log, boom)])
    with pytest.raises(KeyError):
        learn.fit(1)
    assert events(log)[-3:] == ["cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert all(m.pending == 0 for m in learn.model.modules())  # nothing left waiting


def test_misspelt_event_is_an_error() -> None:
    class Typo(Callback):
        def after_epcoh(self, learn: Learner) -> None: ...

    with pytest.raises(TypeError, match="after_epcoh"):
        make_learner([Typo()])


def test_named_callback_is_an_attribute_and_can_be_removed() -> None:
    rec = Recorder()
    learn = make_learner([rec])
    assert learn.recorder is rec
    learn.remove_callbacks(rec)
    assert not hasattr(learn, "recorder")


def test_training_uses_hand_written_gradients_only_and_learns() -> None:
    seen = []

    class NoAutograd(Callback):
        def after_backward(self, learn: Learner) -> None:
            seen.append(torch.is_grad_enabled())
            assert all(not p.requires_grad and p.grad is None for p in learn.model.parameters())

    learn = make_learner([Metrics(), Recorder(), NoAutograd()], n=64, bs=16, lr=0.02)
    learn.fit(6)
    hist = learn.recorder.history
    assert seen and not any(seen)
    assert hist[-1]["valid_loss"] < 0.5 * hist[0]["valid_loss"]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]


def test_metrics_are_exact_weighted_means() -> None:
    x, y = regression_data(10)
    net, loss = small_net(), MSELoss()
    mae = lambda p, t: (p[:, 0] - t).abs().mean()  # noqa: E731
    learn = Learner(
        net,
        loss,
        MomentumSGD(net.parameters(), 0.0),
        SeededLoader(x, y, 4),
        SeededLoader(x, y, 4),
        [Metrics(mae=mae)],
    )
    learn.fit(1)  # lr 0: the weights never move, so every pass sees the same model
    net.eval()
    with torch.no_grad():
        preds = net(x)
    values = learn.metrics.values
    assert values["valid_loss"] == pytest.approx(((preds[:, 0] - y) ** 2).mean().item(), 1e-6)
    assert values["train_loss"] == pytest.approx(values["valid_loss"], 1e-6)
    assert values["valid_mae"] == pytest.approx((preds[:, 0] - y).abs().mean().item(), 1e-6)
    assert "train_mae" not in values


def test_recorder_history_rows_and_step_curves() -> None:
    learn = make_learner([Metrics(), Recorder()], n=8, bs=4)
    learn.fit(2)
    hist = learn.recorder.history
    assert [r["epoch"] for r in hist] == [1, 2]
    assert set(hist[0]) == {"epoch", "train_loss", "valid_loss", "lr", "seconds"}
    assert len(learn.recorder.step_loss) == len(learn.recorder.step_lr) == 4


def test_scheduler_sets_lr_per_step_from_the_step_count() -> None:
    seen = []

    class Spy(Callback):
        order = 0

        def before_batch(self, learn: Learner) -> None:
            if learn.training:
                seen.append((learn.step, learn.opt.lr))

    make_learner([LRScheduler(lambda s: 0.01 * (s + 1)), Spy()], n=8, bs=4).fit(2)
    assert seen == [(s, pytest.approx(0.01 * (s + 1))) for s in range(4)]


def test_early_stopping_stops_after_patience() -> None:
    values = iter([1.0, 0.5, 0.6, 0.7, 0.4, 0.3])

    class Fake(Metrics):
        def after_epoch(self, learn: Learner) -> None:
            if not learn.training:
                self.values = {"valid_loss": next(values)}

    stopper = EarlyStopping(patience=2)
    learn = make_learner([Fake(), stopper], n=4, bs=4)
    learn.fit(6)
    assert learn.epoch == 4  # epochs 1..4 ran; the 5th was cancelled before it started
    assert stopper.best == 0.5 and stopper.best_epoch == 2
    assert "has not improved for 2 epochs" in learn.stop_reason


def test_nonfinite_gradient_stops_before_any_update() -> None:
    class InjectInf(Callback):
        def after_backward(self, learn: Learner) -> None:
            if learn.step == 2:
                learn.model.layers[2].weight.g[0, 0] = float("inf")

    class Snapshot(Callback):
        def before_batch(self, learn: Learner) -> None:
            self.params = [p.clone() for p in learn.model.parameters()]
            self.bufs = [None if b is None else b.clone() for b in learn.opt.bufs]

    snap = Snapshot()
    learn = make_learner([InjectInf(), snap, NonFiniteGuard()], n=16, bs=4)
    with pytest.raises(NonFiniteError) as err:
        learn.fit(1)
    msg = str(err.value)
    assert "step 3 (epoch 1, batch 3)" in msg and "layers.2.weight" in msg
    assert "no parameter was updated" in msg and "\n" not in msg
    assert learn.step == 2
    for before, p in zip(snap.params, learn.model.parameters(), strict=True):
        assert torch.equal(before, p)
    for before, b in zip(snap.bufs, learn.opt.bufs, strict=True):
        assert torch.equal(before, b)


def test_nonfinite_loss_names_the_first_layer_that_overflowed() -> None:
    x, y = regression_data(8)
    net = small_net()
    with torch.no_grad():
        net.layers[0].weight[:, 0] = 3e38  # finite, but x @ w overflows float32 in layer 0
    learn = Learner(
        net,
        MSELoss(),
        MomentumSGD(net.parameters(), 0.1),
        SeededLoader(x, y, 8),
        None,
        [NonFiniteGuard()],
    )
    with pytest.raises(NonFiniteError, match=r"step 1 .*layers\.0 \(Linear"):
        learn.fit(1)


def test_lr_find_records_rising_lrs_and_restores_the_model() -> None:
    learn = make_learner([Recorder()], n=32, bs=4)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    finder = lr_find(learn, start_lr=1e-4, end_lr=1.0, num_steps=20)
    assert 5 <= len(finder.lrs) <= 20
    assert finder.lrs == sorted(finder.lrs) and finder.lrs[0] == pytest.approx(1e-4)
    assert finder.suggestion is not None and 1e-5 <= finder.suggestion <= 0.1
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.recorder in learn.callbacks


def test_progress_prints_one_plain_line_per_epoch_when_not_a_terminal() -> None:
    buf = io.StringIO()
    learn = make_learner([Metrics(), Recorder(), Progress(Console(file=buf, width=100))])
    learn.fit(2)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"epoch 1/2  train_loss \d+\.\d{4}  valid_loss \d+\.\d{4}  lr \S+  \S+s", lines[0]
    )


def test_progress_draws_a_live_bar_on_a_terminal_unless_quiet() -> None:
    for quiet in (False, True):
        buf = io.StringIO()
        console = Console(file=buf, width=100, force_terminal=True)
        make_learner([Metrics(), Recorder(), Progress(console, quiet=quiet)]).fit(1)
        text = buf.getvalue()
        assert ("epoch 1/1 train" in text) is not quiet  # the bar's description
        assert "epoch 1/1  train_loss" in text


def test_the_seed_decides_the_shuffle_and_so_the_result() -> None:
    def final_loss(seed: int) -> float:
        x, y = regression_data(32)
        net = small_net()
        train = SeededLoader(x, y, 4, shuffle=True, seed=seed)
        learn = Learner(
            net, MSELoss(), MomentumSGD(net.parameters(), 0.01), train, None, [Metrics()]
        )
        learn.fit(2)
        return learn.metrics.values["train_loss"]

    assert final_loss(0) == final_loss(0)
    assert final_loss(0) != final_loss(1)


# ------------------------------------------------------------------- the default reporting
def classification_learner(**kwargs) -> Learner:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    net = Sequential(Linear(6, 3, generator=g))
    opt = MomentumSGD(net.parameters(), 0.1)
    train_dl, valid_dl = SeededLoader(x, y, 8), SeededLoader(x[:12], y[:12], 6)
    return Learner(net, CrossEntropyLoss(), opt, train_dl, valid_dl, **kwargs)


def test_a_bare_learner_prints_each_epoch_with_loss_and_accuracy(capsys) -> None:
    learn = classification_learner()
    learn.fit(2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"epoch 2/2  train_loss \d\.\d{4}  valid_loss \d\.\d{4}  valid_accuracy \d\.\d{4}"
        r"  lr 1\.00e-01  \d+\.\ds",
        lines[1],
    )
    assert [row["epoch"] for row in learn.recorder.history] == [1, 2]


def test_a_quiet_learner_prints_nothing_but_still_records(capsys) -> None:
    learn = classification_learner(quiet=True)
    learn.fit(1)
    assert capsys.readouterr().out == ""
    assert "valid_accuracy" in learn.recorder.history[-1]


def test_callbacks_given_replace_the_defaults_of_the_same_name(capsys) -> None:
    mine, buf = Metrics(), io.StringIO()
    learn = classification_learner(callbacks=[mine, Progress(Console(file=buf, width=100))])
    learn.fit(1)
    assert learn.metrics is mine and "valid_accuracy" not in mine.values  # no metric asked
    names = sorted(type(cb).__name__ for cb in learn.callbacks)
    assert names == ["Metrics", "Progress", "Recorder"]
    assert capsys.readouterr().out == "" and buf.getvalue().startswith("epoch 1/1  train_loss")


def test_progress_works_without_a_console(capsys) -> None:
    make_learner([Progress()]).fit(1)
    assert capsys.readouterr().out.startswith("epoch 1/1  train_loss")
