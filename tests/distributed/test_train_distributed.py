"""``handgrad train --nproc N``: the CLI's data-parallel path, 2 processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from support import run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8x8 images, 4 classes; the class is the quadrant of a bright square."""
    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", 256), ("valid", 64), ("test", 64)):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 60, (n, 8, 8))
        for i, c in enumerate(y):
            x[i, 4 * (c // 2) : 4 * (c // 2) + 3, 4 * (c % 2) : 4 * (c % 2) + 3] = 220
        parts[f"x_{split}"], parts[f"y_{split}"] = x.astype(np.uint8), y.astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "tiny-fashion.npz"
    np.savez(path, **parts)
    return path


ARGS = ("--hidden", "16", "--bs", "32", "--quiet", "--lr", "1e-2", "--seed", "1")


def test_train_with_two_processes_then_resume(tiny: Path, tmp_path: Path, capfd) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(tiny), "--out", str(out), *ARGS, "--epochs", "2",
                     "--nproc", "2")  # fmt: skip
    printed = capfd.readouterr().out  # the ranks write to the process's stdout file
    assert result.status == 0, result.err
    assert "device cpu x 2 processes (gloo, 16 rows each)" in printed
    assert printed.count("epoch 1/2") == 1 and printed.count("epoch 2/2") == 1  # rank 0 only
    assert {"best.safetensors", "last.safetensors", "metrics.json", "history.png"} <= {
        p.name for p in out.iterdir()
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["epoch"] == 2
    assert metrics["valid_accuracy"] > 0.5  # 4 classes: it learned something

    result = run_cli("train", "--resume", str(out / "last.safetensors"), "--epochs", "3",
                     "--nproc", "2")  # fmt: skip
    printed = capfd.readouterr().out
    assert result.status == 0, result.err
    assert "resuming at epoch 3" in printed and printed.count("epoch 3/3") == 1
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 3


def test_batch_must_split_between_processes(tiny: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(tiny), "--out", str(tmp_path / "r"), "--bs", "33",
                     "--epochs", "1", "--nproc", "2")  # fmt: skip
    assert result.status == 2
    assert "--bs 33: the global batch must split evenly" in result.err
    assert not (tmp_path / "r").exists()


def test_nproc_must_be_positive(tiny: Path) -> None:
    result = run_cli("train", "--data", str(tiny), "--nproc", "0")
    assert result.status == 2 and "--nproc 0" in result.err


def test_bad_data_in_a_rank_is_one_line_and_status_2(tmp_path: Path, capfd) -> None:
    """A HandgradError raised in a rank reads exactly as with one process: one line, status
    2; no rank adds its own line (nor gloo's text about the closed connection)."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    argv = ("train", "--data", str(bad), "--epochs", "1", "--out", str(tmp_path / "r"))
    alone = run_cli(*argv)
    capfd.readouterr()
    two = run_cli(*argv, "--nproc", "2")
    ranks = capfd.readouterr()
    assert alone.status == 2 and alone.err.count("\n") == 1, alone.err
    assert two.status == 2, two.err
    assert two.err == alone.err
    assert ranks.err == "" and "gloo" not in two.err


MARK = "HANDGRAD_TEST_LAUNCHER"  # in the environment of the launcher and of all its children


def marked(token: str) -> set[int]:
    """Live processes whose environment holds ``MARK=token`` (a zombie's reads as empty)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{MARK}={token}".encode() in env:
                pids.add(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_no_rank_or_helper_outlives_the_launcher(tiny: Path, tmp_path: Path, sig: int) -> None:
    """Kill ``handgrad train --nproc 2`` while its ranks train: both ranks, the fork server
    and the resource tracker are gone within a few seconds, and the run folder stops changing."""
    token, out = uuid.uuid4().hex, tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "handgrad", "train", "--data", str(tiny), "--out", str(out),
         *ARGS, "--epochs", "100000", "--nproc", "2"],
        env={**os.environ, MARK: token}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        # Ranks training: 2 ranks, the fork server, the resource tracker, and a checkpoint.
        while len(marked(token) - {launcher.pid}) < 4 or not (out / "last.safetensors").exists():
            assert launcher.poll() is None, launcher.stderr.read().decode()
            assert time.monotonic() < deadline, "the ranks never started training"
            time.sleep(0.1)
        launcher.send_signal(sig)
        launcher.wait(5)
        killed_at = time.monotonic()
        while (left := marked(token)) and time.monotonic() < killed_at + 5:
            time.sleep(0.1)
        assert not left, f"still running {time.monotonic() - killed_at:.1f} s after: {left}"
        files = {p: p.stat().st_mtime_ns for p in out.iterdir()}
        time.sleep(0.3)
        assert files == {p: p.stat().st_mtime_ns for p in out.iterdir()}
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stderr.close()
        for pid in marked(token):  # this test's own processes, if the code under test failed
            os.kill(pid, signal.SIGKILL)
