"""A real ``handgrad serve`` (uvicorn, a worker process): training streamed by server-sent
events, stop and resume, ten clients at once, a client that leaves mid-stream, a worker that
dies."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
from serve_helpers import digits

pytestmark = pytest.mark.slow


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def events(url: str, until: tuple[str, ...] = ("done", "stopped", "error"), limit: float = 120):
    """Yield the stream's events (dicts) until one of type ``until`` (included)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=limit)
    conn.request("GET", "/api/train/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            line = resp.readline().decode()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                yield event
                if event["type"] in until:
                    return
        raise AssertionError("the stream did not end in time")
    finally:
        conn.close()


def test_a_run_streams_and_leaves_the_cli_files(server, live_runs: Path) -> None:
    status, r = call(server.url, "/api/train", {"epochs": 2, "name": "live", "hidden": "64"})
    assert status == 202 and r["run"] == "live"
    busy, r2 = call(server.url, "/api/train", {"epochs": 1})
    assert busy == 409 and "live is training" in r2["error"]
    seen = list(events(server.url))
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "begin" and kinds[-1] == "done", kinds
    assert kinds.count("epoch") == 2 and "batch" in kinds and "stats" in kinds and "log" in kinds
    stats = next(e for e in seen if e["type"] == "stats")
    layer = stats["layers"][0]
    assert {"mean", "std", "near_zero", "hist"} <= set(layer["act"]) and "grad" in layer
    files = {p.name for p in (live_runs / "live").iterdir()}
    cli = {p.name for p in (live_runs / "mlp").iterdir()}  # written by handgrad train
    assert files == cli, files ^ cli
    metrics = json.loads((live_runs / "live" / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["config"]["hidden"] == [64]
    # a late tab sees the whole run again
    again = [e["type"] for e in events(server.url)]
    assert again == kinds


def test_stop_then_resume(server, live_runs: Path) -> None:
    call(server.url, "/api/train", {"epochs": 3, "name": "paused", "hidden": "32"})
    for _ in events(server.url, until=("epoch",)):
        pass
    assert call(server.url, "/api/train/stop", {})[0] == 202
    last = list(events(server.url))[-1]
    assert last["type"] == "stopped" and last["resumable"], last
    assert not (live_runs / "paused" / "metrics.json").exists()  # as after Ctrl-C
    status, r = call(server.url, "/api/train/resume", {"run": "paused"})
    assert status == 202, r
    kinds = [e["type"] for e in events(server.url)]
    assert kinds[-1] == "done"
    metrics = json.loads((live_runs / "paused" / "metrics.json").read_text())
    assert metrics["epoch"] == 3


def test_a_dead_worker_is_reported_and_the_server_goes_on(server) -> None:
    call(server.url, "/api/train", {"epochs": 50, "name": "doomed"})
    for _ in events(server.url, until=("batch",)):
        pass
    pid = call(server.url, "/api/train")[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    last = list(events(server.url))[-1]
    assert last["type"] == "error" and "SIGKILL" in last["message"], last
    assert call(server.url, "/api/train")[1]["state"] == "failed"
    assert call(server.url, "/api/health")[1]["ok"]
    status, _ = call(server.url, "/api/train", {"epochs": 1, "name": "after", "hidden": "16"})
    assert status == 202  # a new run may start
    assert list(events(server.url))[-1]["type"] in ("done", "stopped")


def test_ten_clients_and_one_that_leaves(server) -> None:
    cases = digits(30, seed=1)

    def draw(case: tuple[list[list[float]], int]) -> tuple[int, int]:
        status, body = call(server.url, "/api/predict", {"pixels": case[0]})
        assert status == 200, body
        return body["predicted"], case[1]

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(draw, cases))
    assert sum(p == y for p, y in results) >= 0.8 * len(cases)
    # a tab that disconnects in the middle of the stream
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", "/api/train/events")
    resp = conn.getresponse()
    assert resp.readline()  # the stream started
    assert call(server.url, "/api/train")[1]["watchers"] == 1
    conn.close()
    deadline = time.monotonic() + 20
    while call(server.url, "/api/train")[1]["watchers"] and time.monotonic() < deadline:
        call(server.url, "/api/predict", {"pixels": cases[0][0]})  # traffic wakes the stream
        time.sleep(0.2)
    assert call(server.url, "/api/train")[1]["watchers"] == 0
    assert call(server.url, "/api/health")[1]["ok"]
