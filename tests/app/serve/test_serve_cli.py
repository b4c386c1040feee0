"""``handgrad serve``'s command line: bad arguments are one line and exit status 2; with no
run yet it trains the default model first."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from serve_helpers import Server

from support import run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "nowhere: no such file or folder"),
        (["--port", "70000"], "--port 70000"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    r = run_cli("serve", "--runs", str(tmp_path / "runs"), *args)
    assert r.status == 2 and message in r.err


def test_a_folder_without_checkpoints_and_a_bad_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run_cli("serve", str(tmp_path / "empty"))
    assert r.status == 2 and "no best.safetensors or last.safetensors" in r.err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("serve", str(bad), "--runs", str(tmp_path))
    assert r.status == 2 and "bad.json: missing" in r.err


@pytest.mark.slow
def test_no_run_yet_trains_the_default_first(tmp_path: Path) -> None:
    server = Server(tmp_path / "runs")
    try:
        assert any("training the default mlp" in line for line in server.lines)
        with urllib.request.urlopen(server.url + "/api/model", timeout=30) as r:
            model = json.loads(r.read())
        assert model["model"] == "mlp" and model["checkpoint"] == "best.safetensors"
        assert (tmp_path / "runs" / model["run"] / "metrics.json").is_file()
    finally:
        server.stop()
