"""Checkpoints: round trip, atomic writes, corruption is an error, resume is bitwise exact."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from handgrad import HandgradError, MSELoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Module
from handgrad.optim.optimizers import SGD
from handgrad.train import checkpoint as ck
from handgrad.train.callbacks import (
    Augment,
    Checkpointer,
    EarlyStopping,
    LRScheduler,
    Metrics,
    Recorder,
)
from handgrad.train.learner import Callback, Learner

from training_helpers import MomentumSGD, SeededLoader, StopAfter, small_net

INFO = {"model": {"name": "test", "kwargs": {}}, "config": {"seed": 0}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second thread costs more in synchronisation than it gains, and on a
    shared machine a two-thread barrier can stall for milliseconds per operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.w": torch.randn(3, 4, generator=g), "optim.m": torch.randn(4, generator=g)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip_and_files(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path / "best.safetensors", tensors(0), INFO)
    assert path == tmp_path / "best.safetensors"
    for name in ("best", "best.json", "best.safetensors"):
        loaded = ck.load_checkpoint(tmp_path / name)
        assert loaded.info["model"] == INFO["model"]
        assert all(torch.equal(loaded.tensors[k], v) for k, v in tensors(0).items())
    assert loaded.group("model").keys() == {"w"}
    side = json.loads((tmp_path / "best.json").read_text())
    assert side["format"] == ck.FORMAT and len(side["weights_sha256"]) == 64
    assert leftovers(tmp_path) == []


def test_no_pickle_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ck.save_checkpoint(tmp_path / "c", tensors(0), INFO)
    ck.load_checkpoint(tmp_path / "c")


@pytest.mark.parametrize("fail_at", ["write_weights", "write_sidecar", "rename_sidecar"])
def test_failed_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    ck.save_checkpoint(tmp_path / "last", tensors(0), INFO)
    real_fsync, real_replace = os.fsync, os.replace
    calls = {"fsync": 0, "replace": 0}

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        if (fail_at, calls["fsync"]) in (("write_weights", 1), ("write_sidecar", 2)):
            raise OSError("disk full")  # the bytes are written, not yet on disk
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls["replace"] += 1
        if fail_at == "rename_sidecar" and calls["replace"] == 2:
            raise OSError("interrupted")  # the weights were already renamed into place
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "fsync", fsync)
    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "last", tensors(1), INFO)
    monkeypatch.undo()
    loaded = ck.load_checkpoint(tmp_path / "last")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in tensors(0).items())
    assert leftovers(tmp_path) == [], "temporary or backup files left behind"


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    calls = []

    def replace(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("interrupted")
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "best", tensors(0), INFO)
    assert list(tmp_path.iterdir()) == []  # no half checkpoint (weights without sidecar)


def corrupt_flip(tmp: Path) -> None:
    data = bytearray((tmp / "c.safetensors").read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: only the hash can tell
    (tmp / "c.safetensors").write_bytes(bytes(data))


def corrupt_truncate(tmp: Path) -> None:
    data = (tmp / "c.safetensors").read_bytes()
    (tmp / "c.safetensors").write_bytes(data[:20])


def corrupt_garbage(tmp: Path) -> None:
    (tmp / "c.safetensors").write_bytes(b"not a safetensors file at all")


def corrupt_sidecar(tmp: Path) -> None:
    (tmp / "c.json").write_text("{ truncated")


def mismatched(tmp: Path) -> None:
    ck.save_checkpoint(tmp / "other", tensors(1), INFO)
    os.replace(tmp / "other.json", tmp / "c.json")


def missing_sidecar(tmp: Path) -> None:
    (tmp / "c.json").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_flip, "corrupt"),
        (corrupt_truncate, "truncated"),
        (corrupt_garbage, "safetensors"),
        (corrupt_sidecar, "corrupt JSON"),
        (mismatched, "does not belong"),
        (missing_sidecar, "missing"),
    ],
)
def test_damaged_checkpoint_is_a_one_line_error(tmp_path: Path, damage, message: str) -> None:
    ck.save_checkpoint(tmp_path / "c", tensors(0), INFO)
    damage(tmp_path)
    with pytest.raises(HandgradError, match=message) as err:
        ck.load_checkpoint(tmp_path / "c.safetensors")
    assert "\n" not in str(err.value)


def test_missing_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HandgradError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------------- resume
def make_net(kind: str) -> Module:
    if kind == "mlp":
        return small_net(features=16)
    # batch-norm buffers and dropout (torch's global RNG) are state too
    g = torch.Generator().manual_seed(0)
    return build_model(
        "cnn",
        in_features=16,
        n_classes=1,
        channels=(4, 8),
        strides=(1, 2),
        dropout=0.5,
        generator=g,
    )


def run(
    folder: Path,
    epochs: int,
    *,
    stop_after: int | None = None,
    resume: bool = False,
    kind: str = "mlp",
):
    """A run with every stateful piece: shuffling, augmentation, momentum, a schedule, the
    global RNG (consumed by a callback each batch) and the stateful callbacks."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 16, generator=g), torch.randn(40, generator=g)
    net = make_net(kind)
    opt = MomentumSGD(net.parameters(), 0.05)

    class Noise(Callback):  # consumes torch's global RNG, as dropout would
        def before_batch(self, learn: Learner) -> None:
            if learn.training:
                learn.xb = learn.xb + 0.01 * torch.randn(learn.xb.shape)

    callbacks = [
        Metrics(),
        Recorder(),
        LRScheduler(lambda s: 0.05 / (1 + 0.1 * s)),
        Augment(1, seed=3, image_shape=(1, 4, 4)),
        Noise(),
        EarlyStopping(patience=50),
        Checkpointer(folder, INFO),
    ]
    if stop_after:
        callbacks.append(StopAfter(stop_after))
    train = SeededLoader(x, y, 8, shuffle=True, seed=5)
    learn = Learner(net, MSELoss(), opt, train, SeededLoader(x[:16], y[:16], 8), callbacks)
    torch.manual_seed(1234)
    start_epoch, start_step = 0, 0
    if resume:
        start_epoch, start_step = ck.restore_learner(
            learn, ck.load_checkpoint(folder / "last.safetensors")
        )
    learn.fit(epochs, start_epoch=start_epoch, start_step=start_step)
    return learn


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_resume_equals_straight_run_bitwise(tmp_path: Path, kind: str) -> None:
    straight = run(tmp_path / "a", 5, kind=kind)
    run(tmp_path / "b", 5, stop_after=2, kind=kind)
    torch.manual_seed(999)  # whatever happened to the RNG in between is undone by the resume
    resumed = run(tmp_path / "b", 5, resume=True, kind=kind)
    final_a, final_b = straight.model.state_dict(), resumed.model.state_dict()
    assert final_a.keys() == final_b.keys()
    for name in final_a:  # parameters and buffers (batch-norm running statistics)
        assert torch.equal(final_a[name], final_b[name]), f"{name} differs after resume"
    assert all(torch.equal(a, b) for a, b in zip(straight.opt.bufs, resumed.opt.bufs, strict=True))
    assert straight.recorder.history == [
        r | {"seconds": s["seconds"]}
        for r, s in zip(resumed.recorder.history, straight.recorder.history, strict=True)
    ]
    assert straight.recorder.step_loss == resumed.recorder.step_loss
    assert straight.checkpointer.best == resumed.checkpointer.best
    info = ck.load_checkpoint(tmp_path / "b" / "last").info
    assert info["epoch"] == 5 and info["step"] == 25 and info["loader"]["epoch"] == 5


# ------------------------------------------------------------- interrupted saves (issue 15)
def killed_save(path: Path, seed: int, kill_at: int) -> None:
    """``save_checkpoint(path, tensors(seed))`` in a forked child killed at step ``kill_at``
    (1, 2: temporary files written; 3: backups linked; 4, 5: each renamed; 6: done)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[ck.KILL_AT], ck._steps_taken = str(kill_at), 0
            ck.save_checkpoint(path, tensors(seed), INFO)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the save was not killed"


def same(loaded: ck.Checkpoint, seed: int) -> bool:
    return all(torch.equal(loaded.tensors[k], v) for k, v in tensors(seed).items())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_a_save_killed_between_its_renames_loads_the_previous_one(tmp_path: Path) -> None:
    ck.save_checkpoint(tmp_path / "last", tensors(0), INFO)
    killed_save(tmp_path / "last", 1, kill_at=4)  # new weights beside the old sidecar
    assert same(ck.load_checkpoint(tmp_path / "last"), 0)
    done = ck.tidy_checkpoint(tmp_path / "last")
    assert done[0].startswith("put back the previous last.safetensors") and len(done) == 2
    assert same(ck.load_checkpoint(tmp_path / "last"), 0) and leftovers(tmp_path) == []
    assert ck.tidy_checkpoint(tmp_path / "last") == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6])
def test_a_first_save_killed_anywhere_is_whole_or_absent(tmp_path: Path, kill_at: int) -> None:
    killed_save(tmp_path / "best", 0, kill_at)
    if kill_at < 4:
        assert not (tmp_path / "best.safetensors").exists()
    else:  # at 4 the sidecar is still under its temporary name: tidying completes the save
        assert same(ck.load_checkpoint(tmp_path / "best"), 0)
    ck.tidy_checkpoint(tmp_path / "best")
    assert leftovers(tmp_path) == []
    if kill_at >= 4:
        assert same(ck.load_checkpoint(tmp_path / "best"), 0)


def test_checkpoints_are_as_readable_as_any_file_the_user_writes(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        ck.save_checkpoint(tmp_path / "c", tensors(0), INFO)
    finally:
        os.umask(umask)
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("c.safetensors", "c.json")} == {0o644}


@pytest.mark.parametrize("prefix", ["model", "optim"])
def test_non_finite_weights_never_load(tmp_path: Path, prefix: str) -> None:
    bad = tensors(0) | {f"{prefix}.v": torch.tensor([1.0, float("nan"), float("inf")])}
    ck.save_checkpoint(tmp_path / "c", bad, INFO)
    with pytest.raises(HandgradError, match=rf"tensor\(s\) hold NaN/Inf \(first {prefix}\.v\)"):
        ck.load_checkpoint(tmp_path / "c")


def resave(path: Path, drop: str = "", **info: object) -> None:
    """Write the checkpoint at ``path`` again without the tensors named ``drop*`` and with
    ``info`` changed, as a damaged or hand-edited checkpoint would be."""
    old = ck.load_checkpoint(path)
    header = ("format", "id", "weights", "weights_sha256")
    kept = {k: v for k, v in old.tensors.items() if not (drop and k.startswith(drop))}
    ck.save_checkpoint(path, kept, {k: v for k, v in old.info.items() if k not in header} | info)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"drop": "rng."}, r"no random generator state \(rng\.torch_cpu\)"),
        ({"drop": "callbacks.recorder."}, r"the callback recorder state does not fit \("),
        ({"epoch": -1}, r"'epoch' in the sidecar is -1, not a count"),
        ({"step": "12"}, r"'step' in the sidecar is '12', not a count"),
        ({"optimizer": {"class": "MomentumSGD", "meta": {}}}, r"optimizer state .*'lr'"),
    ],
)
def test_resume_from_an_incomplete_checkpoint_is_a_one_line_error(
    tmp_path: Path, damage: dict, message: str
) -> None:
    run(tmp_path, 3, stop_after=1)
    resave(tmp_path / "last.safetensors", **damage)
    with pytest.raises(HandgradError, match=message) as err:
        run(tmp_path, 3, resume=True)
    assert "\n" not in str(err.value) and "cannot be resumed" in str(err.value)


def test_resume_without_the_optimizer_state_is_a_one_line_error(tmp_path: Path) -> None:
    def learner() -> Learner:
        x, y = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)), torch.randn(16)
        net = small_net(features=16)
        opt = SGD(net.parameters(), 0.01, momentum=0.9)
        return Learner(net, MSELoss(), opt, SeededLoader(x, y, 8), None, [])

    trained = learner()
    trained.fit(1)
    ck.save_learner(tmp_path / "last", trained, INFO)
    resave(tmp_path / "last.safetensors", drop="optim.")
    with pytest.raises(HandgradError, match=r"the optimizer state does not fit \(SGD") as err:
        ck.restore_learner(learner(), ck.load_checkpoint(tmp_path / "last"))
    assert "\n" not in str(err.value)


def test_only_best_json_records_the_best(tmp_path: Path) -> None:
    """A kill between saving best and last must not leave two stories: ``last.json`` names
    no best, and a resumed run takes it from ``best.json``."""
    run(tmp_path, 4, stop_after=2)
    assert "checkpointer" not in ck.load_checkpoint(tmp_path / "last").info["callbacks"]
    best = ck.load_checkpoint(tmp_path / "best").info
    resave(tmp_path / "best.safetensors", metrics=best["metrics"] | {"valid_loss": -1.0})
    resumed = run(tmp_path, 4, resume=True)
    assert (resumed.checkpointer.best, resumed.checkpointer.best_epoch) == (-1.0, best["epoch"])
