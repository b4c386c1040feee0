"""``FastLearner`` trains exactly as the ``Learner`` does, with every callback event."""

from __future__ import annotations

import pytest
import torch

from handgrad import fast
from handgrad.app.bench.data import Batches, make_data
from handgrad.fast.learner import FastLearner
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import SGD
from handgrad.train.callbacks import Metrics, Recorder
from handgrad.train.learner import Callback, CancelBatchException, Learner

pytestmark = pytest.mark.slow  # builds the C++ extension on the first run


def accuracy(preds, labels):
    return (preds.argmax(1) == labels).double().mean()


class Events(Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.grad_norms: list[float] = []

    def after_predict(self, learn) -> None:
        self.seen.append("after_predict")

    def after_loss(self, learn) -> None:
        self.seen.append("after_loss")

    def after_backward(self, learn) -> None:
        self.seen.append("after_backward")
        self.grad_norms.append(float(sum(p.g.norm() for p in learn.model.parameters())))


def fit(cls, model_name: str, **kw):
    x, y = make_data(512, 0)
    xv, yv = make_data(128, 1)
    model = build_model(model_name, generator=torch.Generator().manual_seed(0), **kw).double()
    events = Events()
    learn = cls(
        model,
        CrossEntropyLoss(),
        SGD(model.parameters(), lr=0.1, momentum=0.9),
        Batches(x.double(), y, 64),
        Batches(xv.double(), yv, 64),
        callbacks=[Metrics(accuracy=accuracy), Recorder(), events],
    )
    learn.fit(2)
    return learn, events


def test_fast_learner_matches_the_learner() -> None:
    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    slow, slow_events = fit(Learner, "mlp", hidden=(32, 16))
    quick, quick_events = fit(FastLearner, "mlp", hidden=(32, 16))
    assert quick.fast.compiled
    assert quick_events.seen == slow_events.seen
    torch.testing.assert_close(quick_events.grad_norms, slow_events.grad_norms)
    for a, b in zip(quick.recorder.history, slow.recorder.history, strict=True):
        assert a.keys() == b.keys()
        for k in ("train_loss", "valid_loss", "valid_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-10)
    # atol: another BLAS sums in another order, and a weight near zero (4e-8 on a GPU machine's
    # torch) then differs by 1e-17, which is 2e-10 of itself.
    for p, q in zip(quick.model.parameters(), slow.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-15)


def test_cancelled_batch_leaves_no_gradient() -> None:
    class CancelEveryOther(Callback):
        def after_loss(self, learn) -> None:
            if learn.training and learn.batch_idx % 2:
                raise CancelBatchException

    x, y = make_data(256, 0)
    model = build_model("mlp", hidden=(8,))
    learn = FastLearner(
        model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), Batches(x, y, 64),
        callbacks=[CancelEveryOther()],
    )  # fmt: skip
    learn.fit(1)
    assert learn.step == 2
    assert all(p.g is None for p in model.parameters())


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_update_trains_like_the_learner(weight_decay) -> None:
    """Plain SGD and callbacks that only look at finished batches: the update runs inside the
    compiled call, and the run is the Learner's (history and weights to 1e-10)."""
    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    x, y = make_data(512, 0)
    xv, yv = make_data(128, 1)
    runs = []
    for cls in (Learner, FastLearner):
        model = build_model("mlp", generator=torch.Generator().manual_seed(0), hidden=(24,))
        model = model.double()
        opt = SGD(model.parameters(), lr=0.1, weight_decay=weight_decay)
        learn = cls(
            model,
            CrossEntropyLoss(),
            opt,
            Batches(x.double(), y, 64),
            Batches(xv.double(), yv, 64),
            callbacks=[Metrics(accuracy=accuracy), Recorder()],
        )
        if cls is FastLearner:
            assert learn.fused
        learn.fit(2)
        runs.append(learn)
    slow, quick = runs
    assert quick.step == slow.step and quick.opt.step_count == slow.opt.step_count
    for a, b in zip(quick.recorder.history, slow.recorder.history, strict=True):
        for k in ("train_loss", "valid_loss", "valid_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-10)
    for p, q in zip(quick.model.parameters(), slow.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        assert p.g is None


def test_a_callback_that_reads_gradients_turns_the_fused_update_off() -> None:
    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    x, y = make_data(128, 0)
    model = build_model("mlp", generator=torch.Generator().manual_seed(0), hidden=(8,))
    learn = FastLearner(
        model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), Batches(x, y, 64), None
    )
    assert learn.fused
    events = Events()
    learn.add_callbacks(events)
    assert not learn.fused
    learn.fit(1)
    assert len(events.grad_norms) == 2 and all(n > 0 for n in events.grad_norms)


def test_the_non_finite_guard_keeps_the_update_fused_and_still_stops_a_nan() -> None:
    """``NonFiniteGuard`` (in every ``handgrad train``) only reads: the update stays fused, and
    a NaN in the data still stops training at that batch, weights never saved non-finite."""
    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    from handgrad.optim.optimizers import AdamW
    from handgrad.train.callbacks.guards import NonFiniteError, NonFiniteGuard

    x, y = make_data(256, 0)
    x[130, 5] = float("nan")  # in the third batch
    model = build_model("mlp", generator=torch.Generator().manual_seed(0), hidden=(8,))
    learn = FastLearner(
        model, CrossEntropyLoss(), AdamW(model.parameters()), Batches(x, y, 64), None,
        callbacks=[NonFiniteGuard()],
    )  # fmt: skip
    assert learn.fused
    with pytest.raises(NonFiniteError):
        learn.fit(1)
    assert learn.batch_idx == 2
