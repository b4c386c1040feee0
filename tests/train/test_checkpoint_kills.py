"""A run killed at any moment of checkpointing leaves files that agree, and ``--resume`` says the
truth about them (issue 15, item 1).

``handgrad train`` runs in a child process that ``HANDGRAD_CHECKPOINT_KILL_AT=N`` kills with
SIGKILL at the N-th step of writing its checkpoints (a hook for tests, see
:mod:`handgrad.train.checkpoint`), for every N until the run finishes. The children are forks
of this process, so each costs the training and not a fresh Python with torch to import.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handgrad.data import load_dataset
from handgrad.train import checkpoint as ck

from support import run_cli

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL"),
    pytest.mark.slow,  # 25 runs: seconds, not milliseconds
]

# 8 steps an epoch; at this learning rate the second epoch improves on the first
TRAIN = ("train", "--hidden", "8", "--bs", "500", "--lr", "0.03", "--quiet", "--threads", "1")
RESUME = ("train", "--quiet", "--threads", "1")
BEST = re.compile(r"best valid_accuracy (\S+) at epoch (\d+): (\S+\.safetensors)")


def killed_runs(folder: Path, steps: range, epochs: int = 2) -> dict[int, int]:
    """``handgrad train`` into ``folder/<N>`` for each N in ``steps``, each in a forked child
    killed at step N, a few at a time; the wait status of each."""
    pids = {}
    for kill_at in steps:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 1
            try:
                os.environ[ck.KILL_AT] = str(kill_at)
                ck._steps_taken = 0
                out = str(folder / str(kill_at))
                status = run_cli(*TRAIN, "--epochs", str(epochs), "--out", out).status
            finally:
                os._exit(status)
        pids[pid] = kill_at
    statuses, deadline = {}, time.monotonic() + 60
    while pids and time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid in pids:
            statuses[pids.pop(pid)] = status
        elif not pid:
            time.sleep(0.005)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not pids, f"runs to be killed at steps {sorted(pids.values())} hung"
    return statuses


def on_disk(out: Path) -> tuple:
    """What a kill left, up to the random parts of names: files and the sidecars' epochs."""
    names = sorted(re.sub(r"\.[^.]+\.tmp$", ".tmp", p.name) for p in out.iterdir())
    epochs = [
        json.loads(side.read_text())["epoch"] if side.exists() else None
        for side in (out / "best.json", out / "last.json")
    ]
    return (*names, *epochs)


def assert_files_agree(out: Path) -> None:
    """Each checkpoint present loads whole, and ``best`` is at least as good as ``last``."""
    loaded = {}
    for name in ("best", "last"):
        if (out / f"{name}.safetensors").exists() or (out / f"{name}.json").exists():
            loaded[name] = ck.load_checkpoint(out / name).info
    if "last" in loaded:
        assert "best" in loaded, "last was saved before best"
        best, last = loaded["best"]["metrics"], loaded["last"]["metrics"]
        assert best["valid_accuracy"] >= last["valid_accuracy"]


def assert_resume_tells_the_truth(out: Path) -> None:
    if not (out / "last.safetensors").exists():
        result = run_cli(*RESUME, "--resume", str(out / "last.safetensors"), "--epochs", "3")
        assert result.status == 2 and len(result.err.strip().splitlines()) == 1, result.err
        return
    result = run_cli(*RESUME, "--resume", str(out / "last.safetensors"), "--epochs", "3")
    assert result.status == 0, result.err
    value, epoch, path = BEST.search(result.out).groups()
    best = ck.load_checkpoint(path).info
    assert (f"{best['metrics']['valid_accuracy']:.4f}", best["epoch"]) == (value, int(epoch))
    history = json.loads((out / "metrics.json").read_text())
    assert float(value) == pytest.approx(history["best"]["valid_accuracy"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is not tested here and costs most of a run's time: the resumed runs' history.png,
    and reading mnist-sample anew in each run (the forks inherit it)."""
    dataset = load_dataset("mnist-sample")
    monkeypatch.setattr("handgrad.app.run.load_dataset", lambda *args, **kwargs: dataset)
    monkeypatch.setattr("handgrad.app.fit.plot_run_history", lambda *args: None)


def test_a_kill_at_any_step_of_checkpointing_leaves_files_that_agree(
    tmp_path: Path, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole run, here: how many steps its checkpointing takes (and the forks start warm).
    monkeypatch.setenv(ck.KILL_AT, "1000")
    monkeypatch.setattr(ck, "_steps_taken", 0)
    assert run_cli(*TRAIN, "--epochs", "2", "--out", str(tmp_path / "whole")).status == 0
    assert ck._steps_taken == 24  # 6 a save; epochs 1 and 2 each save best, then last
    monkeypatch.delenv(ck.KILL_AT)
    wave = max(2, min(8, os.cpu_count() or 2))
    statuses: dict[int, int] = {}
    for first in range(1, 25, wave):
        statuses |= killed_runs(tmp_path, range(first, min(first + wave, 25)))
    resumed = set()
    for kill_at in range(1, 25):
        assert os.WIFSIGNALED(statuses[kill_at]), f"no kill at step {kill_at}"
        assert os.WTERMSIG(statuses[kill_at]) == signal.SIGKILL
        out = tmp_path / str(kill_at)
        assert_files_agree(out)
        if on_disk(out) not in resumed:  # kills at neighbouring steps often leave the same
            resumed.add(on_disk(out))
            assert_resume_tells_the_truth(out)
    assert len(resumed) >= 8


def test_a_kill_between_best_and_last_in_a_fresh_interpreter(tmp_path: Path, quick: None) -> None:
    """The moment of the issue, with the shipped entry point: after epoch 2's best is saved
    and before its last is."""
    env = os.environ | {ck.KILL_AT: "18"}  # 6 steps per save: best 1, last 1, best 2
    cmd = [sys.executable, "-m", "handgrad", *TRAIN, "--epochs", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert ck.load_checkpoint(tmp_path / "best").info["epoch"] == 2
    assert ck.load_checkpoint(tmp_path / "last").info["epoch"] == 1
    assert_resume_tells_the_truth(tmp_path)
