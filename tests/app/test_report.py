"""``save_stats_plots`` writes every statistics plot; ``handgrad report`` embeds every plot,
the configuration and the metrics in one self-contained page."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch

from handgrad.app.plots.stats import save_stats_plots
from handgrad.app.report import read_run, write_report
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.models import build_model
from handgrad.train.stats import StatsHooks

from support import run_cli

STATS_PLOTS = {
    "activation_stats.png",
    "activation_histograms.png",
    "gradient_stats.png",
    "gradient_histograms.png",
    "dead_units.png",
    "confident_mistakes.png",
}

HISTORY = [
    {"epoch": 1, "train_loss": 0.91, "valid_loss": 0.52, "valid_accuracy": 0.8125, "lr": 0.01},
    {"epoch": 2, "train_loss": 0.43, "valid_loss": 0.37, "valid_accuracy": 0.9375, "lr": 0.005},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as ``handgrad train --plots`` leaves it: sidecar, metrics, plots."""
    root = tmp_path_factory.mktemp("run")
    gen = torch.Generator().manual_seed(0)
    model = build_model("mlp", in_features=784, n_classes=3, hidden=(8,), generator=gen)
    loss_fn = MSELoss()
    with StatsHooks(model, every=1) as hooks:
        for _ in range(4):
            loss_fn(model(torch.rand(16, 784, generator=gen)), torch.randn(16, 3, generator=gen))
            model.backward(loss_fn.backward()[0])
    x, y = torch.rand(40, 784, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    written = save_stats_plots(
        root / "plots",
        activations=hooks.activations,
        gradients=hooks.gradients,
        model=model,
        valid=(x, y),
        classes=["zero", "one", "two"],
    )
    assert {p.name for p in written} == STATS_PLOTS
    # As the training helper writes them: the sidecar holds the recorder's history, and
    # metrics.json the final metrics, best epoch and config.
    config = {"model": "mlp", "epochs": 2, "lr": 0.01, "bs": 64, "opt": "adam"}
    sidecar = {
        "format": "handgrad-checkpoint/1",
        "config": config,
        "data": {"name": "mnist-sample", "classes": ["zero", "one", "two"]},
        "step": 126,
        "callbacks": {"recorder": {"history": HISTORY}},
        "versions": {"handgrad": "0.1.0", "torch": torch.__version__},
    }
    (root / "last.json").write_text(json.dumps(sidecar))
    final = {k: v for k, v in HISTORY[-1].items() if k != "lr"}
    metrics = {**final, "train_seconds": 12.5, "best": {"epoch": 2, "valid_accuracy": 0.9375}}
    (root / "metrics.json").write_text(json.dumps(metrics | {"config": config}))
    return root


def test_stats_json_summarizes_each_layer(run_dir) -> None:
    stats = json.loads((run_dir / "plots" / "stats.json").read_text())
    assert [row["name"] for row in stats["layers"]] == ["layers.0", "layers.1", "layers.2"]
    assert all(row["act_step"] == 3 and row["grad_std"] > 0 for row in stats["layers"])
    (relu,) = stats["dead_units"]
    assert relu["units"] == 8 and 0 <= relu["dead"] <= 8


def test_report_embeds_every_plot_the_config_and_the_metrics(run_dir) -> None:
    page = write_report(run_dir).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    embedded = dict(re.findall(r'<img alt="([\w-]+)" src="data:image/png;base64,([^"]+)"', page))
    assert set(embedded) == {Path(n).stem for n in STATS_PLOTS}
    for stem, data in embedded.items():
        assert base64.b64decode(data) == (run_dir / "plots" / f"{stem}.png").read_bytes()
    # Self-contained: nothing is loaded from anywhere else.
    assert not re.search(r'(src|href)="(?!data:)', page)
    # Every epoch's metrics, the summary and the config.
    assert "0.9375" in page and "0.8125" in page and "best valid_accuracy" in page
    for text in ("config.bs", "config.opt", "adam", "mnist-sample", "126", "12.5", "best epoch"):
        assert text in page
    assert "layers.1 (ReLU)" in page  # the per-layer statistics table


def test_report_cli(run_dir, tmp_path) -> None:
    out = tmp_path / "r.html"
    result = run_cli("report", str(run_dir), "--out", str(out), "--title", "a <b> run")
    assert result.status == 0, result.err
    assert "6 plots, 2 epochs" in result.out
    assert "<title>a &lt;b&gt; run</title>" in out.read_text()


def test_report_reads_a_history_list_in_metrics_json(tmp_path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(HISTORY))
    info = read_run(tmp_path)
    assert info.history == HISTORY and info.plots == [] and info.sidecar == {}
    assert "0.8125" in write_report(tmp_path).read_text()


def test_report_errors_are_one_line_and_leave_nothing(tmp_path) -> None:
    missing = run_cli("report", str(tmp_path / "nope"))
    assert missing.status == 2 and "no such run folder" in missing.err
    assert len(missing.err.strip().splitlines()) == 1

    empty = run_cli("report", str(tmp_path))
    assert empty.status == 2 and "handgrad train" in empty.err

    (tmp_path / "metrics.json").write_text('{"history": [{"epoch": 1,')
    corrupt = run_cli("report", str(tmp_path))
    assert corrupt.status == 2 and "metrics.json: not valid JSON" in corrupt.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_report_counts_only_the_runs_own_plots(tmp_path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(HISTORY[:1]))
    for name in ("history.png", "confusion-tiny-valid.png", "holiday.png"):  # evaluate's, mine
        (tmp_path / name).write_bytes(b"\x89PNG " + name.encode())
    r = run_cli("report", str(tmp_path))
    assert r.status == 0, r.err
    assert "1 plot, 1 epoch of metrics" in r.out
    page = (tmp_path / "report.html").read_text()
    assert 'alt="history"' in page and "confusion-tiny" not in page and "holiday" not in page


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path) -> None:
    (tmp_path / "history.png").write_bytes(b"\x89PNG")
    r = run_cli("report", str(tmp_path))
    assert r.status == 2 and "not a training run" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "report.html").exists()
