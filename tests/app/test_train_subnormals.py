"""``handgrad train --subnormals``: the policy is part of a run's recipe, saved with its
checkpoints, and a resumed run trains with the policy of the run it continues."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from handgrad.train import loop

from support import run_cli

ARGS = ("--hidden", "8", "--bs", "32", "--quiet", "--threads", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", 64), ("valid", 32), ("test", 32)):
        parts[f"x_{split}"] = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
        parts[f"y_{split}"] = rng.integers(0, 4, n).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "tiny-fashion.npz"
    np.savez(path, **parts)
    return path


@pytest.fixture
def policies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The policy of every ``fit`` that runs."""
    seen: list[str] = []
    real = loop.subnormal_policy

    @contextmanager
    def spy(policy: str, device):
        seen.append(policy)
        with real(policy, device):
            yield

    monkeypatch.setattr(loop, "subnormal_policy", spy)
    return seen


def train(data: Path, out: Path, *extra: str):
    return run_cli("train", "--data", str(data), "--out", str(out), *ARGS, *extra)


def saved_policy(out: Path) -> str:
    return json.loads((out / "last.json").read_text())["config"]["subnormals"]


def test_flush_is_the_default_and_is_saved(tiny: Path, tmp_path: Path, policies) -> None:
    r = train(tiny, tmp_path / "run", "--epochs", "1")
    assert r.status == 0, r.err
    assert policies == ["flush"] and saved_policy(tmp_path / "run") == "flush"


def test_a_resumed_run_keeps_the_saved_policy(tiny: Path, tmp_path: Path, policies) -> None:
    r = train(tiny, tmp_path / "run", "--epochs", "2", "--stop-after", "1", "--subnormals", "keep")
    assert r.status == 0, r.err
    assert saved_policy(tmp_path / "run") == "keep"
    last = str(tmp_path / "run" / "last.safetensors")
    resumed = run_cli("train", "--resume", last, "--quiet", "--threads", "1")
    assert resumed.status == 0, resumed.err
    assert policies == ["keep", "keep"]
    changed = run_cli("train", "--resume", last, "--epochs", "3", "--subnormals", "flush")
    assert changed.status == 2 and "--subnormals: cannot change when resuming" in changed.err


def test_a_run_saved_before_the_policy_resumes_with_ieee_subnormals(
    tiny: Path, tmp_path: Path, policies
) -> None:
    r = train(tiny, tmp_path / "run", "--epochs", "2", "--stop-after", "1")
    assert r.status == 0, r.err
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "run" / "last.safetensors", old / "last.safetensors")
    info = json.loads((tmp_path / "run" / "last.json").read_text())
    del info["config"]["subnormals"]  # as written before the option existed
    (old / "last.json").write_text(json.dumps(info))
    resumed = run_cli("train", "--resume", str(old / "last.safetensors"), "--quiet")
    assert resumed.status == 0, resumed.err
    assert policies == ["flush", "keep"]


def test_an_unknown_policy_is_a_usage_error(tiny: Path, tmp_path: Path) -> None:
    r = train(tiny, tmp_path / "run", "--subnormals", "ieee")
    assert r.status == 2 and "invalid choice: 'ieee'" in r.err
