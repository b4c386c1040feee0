"""Fixtures of the serve tests: a runs folder with a trained mlp and cnn (trained once per
session, seconds), the app's test client, and a real server in a subprocess."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="handgrad serve needs the serve extra")
pytest.importorskip("uvicorn", reason="handgrad serve needs the serve extra")

from serve_helpers import Server

from support import run_cli


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with ``mlp`` (2 epochs) and ``cnn`` (1 epoch) on mnist-sample."""
    runs = tmp_path_factory.mktemp("serve") / "runs"
    for name, args in (("mlp", ("--epochs", "2")), ("cnn", ("--model", "cnn", "--epochs", "1"))):
        r = run_cli("train", "--out", str(runs / name), "--quiet", "--seed", "0", *args)
        assert r.status == 0, r.err
    return runs


@pytest.fixture
def runs(trained_runs: Path, tmp_path: Path) -> Path:
    """A private copy of the trained runs (a test may add or break runs)."""
    out = tmp_path / "runs"
    shutil.copytree(trained_runs, out)
    return out


@pytest.fixture
def client(runs: Path) -> Iterator[object]:
    from starlette.testclient import TestClient

    from handgrad.app.serve.app import create_app

    with TestClient(create_app(runs, runs / "mlp" / "best.safetensors")) as c:
        yield c


@pytest.fixture(scope="module")
def live_runs(trained_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("live") / "runs"
    shutil.copytree(trained_runs, out)
    return out


@pytest.fixture(scope="module")
def server(live_runs: Path) -> Iterator[Server]:
    """One server for a test module (its runs folder: ``live_runs``)."""
    s = Server(live_runs, live_runs / "mlp" / "best.safetensors")
    try:
        yield s
    finally:
        s.stop()
