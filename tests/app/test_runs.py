"""``handgrad runs [DIR]``: one line per run folder with its key metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handgrad.train.callbacks.loggers import history_csv

from support import run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-epoch run paused after one, beside hand-made folders of every other kind."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    data = root.parent / "tiny.npz"
    parts = {}
    for split, n in (("train", 64), ("valid", 32), ("test", 32)):
        parts[f"x_{split}"] = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
        parts[f"y_{split}"] = rng.integers(0, 2, n).astype(np.int64)
    np.savez(data, **parts)
    trained = run_cli(
        "train", "--data", str(data), "--out", str(root / "a-paused"), "--hidden", "8",
        "--epochs", "2", "--stop-after", "1", "--quiet", "--threads", "1", "--shift", "0",
    )  # fmt: skip
    assert trained.status == 0, trained.err
    history = [{"epoch": 1, "train_loss": 0.5, "valid_loss": 0.25}]
    (root / "b-killed").mkdir()
    last = {"epoch": 1, "model": {"name": "cnn"}, "callbacks": {"recorder": {"history": history}}}
    (root / "b-killed" / "last.json").write_text(json.dumps(last))
    (root / "c-csv").mkdir()
    (root / "c-csv" / "history.csv").write_text(history_csv(history))
    (root / "d-broken").mkdir()
    (root / "d-broken" / "metrics.json").write_text("{not json")
    (root / "d2-resumed").mkdir()  # resumed past its metrics.json, then killed
    (root / "d2-resumed" / "metrics.json").write_text(json.dumps({"epoch": 1, "train_loss": 9.0}))
    (root / "d2-resumed" / "last.json").write_text(json.dumps(last | {"epoch": 2}))
    (root / "e-pictures").mkdir()  # not a run: never listed
    (root / "e-pictures" / "x.png").write_bytes(b"png")
    (root / "notes.txt").write_text("not a folder")
    return root


def test_runs_lists_each_run_folder_with_its_metrics(runs: Path) -> None:
    result = run_cli("runs", str(runs))
    assert result.status == 0, result.err
    header, *lines = result.out.splitlines()
    assert header.split() == [
        "run", "model", "epochs", "train_loss", "valid_loss", "valid_accuracy", "best", "state"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines] == [
        "a-paused", "b-killed", "c-csv", "d-broken", "d2-resumed"
    ]  # fmt: skip
    metrics = json.loads((runs / "a-paused" / "metrics.json").read_text())
    paused = lines[0].split()
    assert paused[1:4] == ["mlp", "1", f"{metrics['train_loss']:.4f}"]
    assert f"{metrics['valid_accuracy']:.4f}" in paused and paused[-3:] == ["paused", "at", "1/2"]
    assert lines[1].split() == ["b-killed", "cnn", "1", "0.5000", "0.2500", "-", "-", "stopped"]
    assert lines[2].split()[1:6] == ["-", "1", "0.5000", "0.2500", "-"]
    assert "unreadable:" in lines[3]
    assert lines[4].split() == ["d2-resumed", "cnn", "2", "0.5000", "0.2500", "-", "-", "stopped"]


def test_runs_of_an_empty_folder_says_so(tmp_path: Path) -> None:
    result = run_cli("runs", str(tmp_path))
    assert result.status == 0 and result.out.startswith(f"no runs in {tmp_path}")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_runs_of_a_missing_folder_or_a_file_is_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "runs"
    if kind == "file":
        target.write_text("")
    result = run_cli("runs", str(target))
    assert result.status == 2
    assert len(result.err.strip().splitlines()) == 1 and str(target) in result.err
