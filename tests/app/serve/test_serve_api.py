"""The JSON API through Starlette's test client: every endpoint, and the bad inputs."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import digits


def _png(rows: list[list[float]], scale: int = 10) -> str:
    from PIL import Image

    a = (np.kron(np.asarray(rows), np.ones((scale, scale))) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_pages_and_static_files(client) -> None:
    for path, text in (("/", "Draw a digit"), ("/train", "New run"), ("/runs", "Runs side")):
        r = client.get(path)
        assert r.status_code == 200 and text in r.text
    assert "uPlot" in client.get("/static/vendor/uplot/uPlot.iife.min.js").text
    assert client.get("/static/vendor/uplot/LICENSE").status_code == 200


def test_predict_real_digits(client) -> None:
    right = 0
    cases = digits(20)
    for rows, label in cases:
        r = client.post("/api/predict", json={"image": _png(rows)})
        assert r.status_code == 200, r.text
        body = r.json()
        right += body["predicted"] == label
        assert abs(sum(body["probs"]) - 1) < 1e-6
        assert body["input"]["shape"] == [28, 28] and body["saliency"]["shape"] == [28, 28]
        assert [entry["shape"] for entry in body["layers"]] == [[512], [256], [10]]
    assert right >= 0.8 * len(cases)


def test_predict_pixels_target_and_floats(client) -> None:
    rows, label = digits(1)[0]
    a = client.post("/api/predict", json={"pixels": rows, "floats": True}).json()
    other = (label + 1) % 10
    b = client.post("/api/predict", json={"pixels": rows, "target": other, "floats": True}).json()
    assert a["target"] == a["predicted"] and b["target"] == other
    assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    assert a["saliency"]["values"] != b["saliency"]["values"]  # the gradient toward another class
    assert len(a["input"]["values"]) == 28


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "no drawing"),
        (b"not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"image": 5}', 400, "image:"),
        (b'{"image": "%%%"}', 400, "base64"),
        (b'{"image": "aGVsbG8="}', 400, "cannot read it as an image"),
        (b'{"pixels": [[0, 0], [0, 0]]}', 400, "blank"),
        (b'{"pixels": [[0, 2]]}', 400, "in [0, 1]"),
        (b'{"pixels": [[0, "a"]]}', 400, "in [0, 1]"),
        (b'{"pixels": [[0, 1], [1]]}', 400, "equal lengths"),
        (b'{"pixels": []}', 400, "non-empty"),
        (b'{"pixels": [[1]], "target": 10}', 400, "target"),
        (b'{"pixels": [[1]], "target": true}', 400, "target"),
    ],
)
def test_bad_drawings_are_4xx_json(client, body: bytes, status: int, message: str) -> None:
    r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/api/health").json()["ok"]


def test_body_size_is_limited(client) -> None:
    from handgrad.app.serve.app import MAX_BODY

    big = b'{"image": "' + b"A" * (MAX_BODY + 10) + b'"}'
    r = client.post("/api/predict", content=big)
    assert r.status_code == 413 and "bytes" in r.json()["error"]

    def chunks():  # no content-length: the limit holds while reading
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"A" * 65536

    r = client.post("/api/predict", content=chunks())
    assert r.status_code == 413
    r = client.post("/api/model", content=b'{"run": "' + b"a" * 5000 + b'"}')
    assert r.status_code == 413


@pytest.mark.parametrize(
    "name", ["..", "../runs", "/etc", "mlp/../cnn", ".hidden", "", "a" * 200, "nope", "a\\b"]
)
def test_run_names_stay_in_the_runs_folder(client, name: str) -> None:
    r = client.post("/api/model", json={"run": name})
    assert r.status_code == 404, r.text
    assert "error" in r.json()


def test_paths_outside_are_not_served(client, runs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "best.safetensors").write_text("not for you")
    os.symlink(secret, runs / "link")  # a link out of the runs folder is refused too
    assert client.post("/api/model", json={"run": "link"}).status_code == 404
    for path in (
        "/api/runs/..%2F..%2Fetc",
        "/api/runs/%2E%2E",
        "/api/runs/link",
        "/runs/..%2Fsecret/report",
        "/runs/link/report",
        "/static/..%2Fapp.py",
        "/static/%2E%2E/app.py",
        "/static/../../app.py",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "not for you" not in r.text and "create_app" not in r.text
    assert client.post("/api/model", json={"run": "mlp", "checkpoint": "../x"}).status_code == 404


def test_model_runs_and_report(client) -> None:
    m = client.get("/api/model").json()
    assert m["run"] == "mlp" and m["model"] == "mlp" and "784-512-256-10" in m["description"]
    m = client.post("/api/model", json={"run": "cnn"}).json()
    assert m["model"] == "cnn"
    rows, _ = digits(1)[0]
    body = client.post("/api/predict", json={"pixels": rows}).json()
    assert body["layers"][0]["shape"] == [16, 28, 28]
    runs = client.get("/api/runs").json()["runs"]
    assert {r["name"] for r in runs} == {"mlp", "cnn"}
    mlp = next(r for r in runs if r["name"] == "mlp")
    assert [h["epoch"] for h in mlp["history"]] == [1, 2] and mlp["state"] == "done"
    one = client.get("/api/runs/mlp").json()
    assert one["config"]["model"] == "mlp" and len(one["history"]) == 2
    page = client.get("/runs/mlp/report")
    assert page.status_code == 200 and "valid_accuracy" in page.text
    assert client.get("/api/nothing").json()["error"]
    opts = client.get("/api/options").json()
    assert "mnist-sample" in opts["data"] and opts["recipes"]["mlp"]["epochs"] >= 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "resnet9000"}, "model 'resnet9000'"),
        ({"data": "/etc/passwd"}, "data '/etc/passwd'"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": "3"}, "epochs"),
        ({"lr": -1}, "--lr"),
        ({"name": "../escape"}, "name"),
        ({"code": "import os"}, "unknown option"),
        ({"hidden": "a,b"}, "--hidden"),
    ],
)
def test_bad_train_requests(client, body: dict, message: str) -> None:
    r = client.post("/api/train", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert client.get("/api/train").json()["state"] == "idle"


def test_stop_and_resume_need_a_run(client) -> None:
    assert client.post("/api/train/stop").status_code == 409
    r = client.post("/api/train/resume", json={"run": "mlp", "epochs": 2})
    assert r.status_code == 400 and "epochs > 2" in r.json()["error"]
    assert client.post("/api/train/resume", json={"run": "../mlp"}).status_code == 404
    r = client.post("/api/train", content=json.dumps({"name": "mlp"}))
    assert r.status_code == 409 and "exists" in r.json()["error"]


def test_no_model_loaded(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from handgrad.app.serve.app import create_app

    with TestClient(create_app(tmp_path / "runs")) as c:
        assert c.get("/api/model").status_code == 404
        r = c.post("/api/predict", json={"pixels": [[1]]})
        assert r.status_code == 409 and "no model" in r.json()["error"]
        assert c.get("/api/runs").json()["runs"] == []
