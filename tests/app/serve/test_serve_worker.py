"""The Train page's stream: it reports the run without changing it."""

from __future__ import annotations

import queue
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file

from handgrad.app.config import TrainConfig
from handgrad.app.fit import train
from handgrad.app.serve import worker


def _train(out: Path, stream: bool, sink: queue.SimpleQueue) -> None:
    config = TrainConfig(epochs=2, hidden=(16,), out=str(out), quiet=True, logger="")
    callbacks = [worker.Stream(sink)] if stream else []
    train(config, Console(quiet=True), given={"out", "hidden"}, callbacks=callbacks)


def test_streaming_leaves_the_run_bitwise_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(worker, "STATS_EVERY_S", 0.0)  # a probe after every batch
    sink: queue.SimpleQueue = queue.SimpleQueue()
    _train(tmp_path / "plain", False, sink)
    _train(tmp_path / "streamed", True, sink)
    events = []
    while not sink.empty():
        events.append(sink.get())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds.count("epoch") == 2 and kinds.count("stats") > 10
    layer = next(e for e in events if e["type"] == "stats")["layers"][0]
    assert layer["act"]["std"] > 0 and sum(layer["grad"]["hist"]) > 0
    for name in ("best.safetensors", "last.safetensors"):
        a = load_file(tmp_path / "plain" / name)
        b = load_file(tmp_path / "streamed" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
