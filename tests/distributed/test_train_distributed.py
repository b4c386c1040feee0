"""``handgrad train --nproc N``: the CLI's data-parallel path, 2 processes on 127.0.0.1."""

from __future__ import annotations

import json
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
