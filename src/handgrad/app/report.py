"""One self-contained HTML page for a training run: its plots, its configuration and metrics.

``write_report(run_dir)`` reads what ``handgrad train`` left in the run folder:

- the checkpoint sidecars (``last.json``, ``best.json``: any ``*.json`` whose ``format`` is a
  handgrad checkpoint), for the configuration, model, data, versions and the recorder's
  per-epoch history;
- ``metrics.json`` when present: the run's final metrics, best epoch, config, data, model and
  versions (a dict; its ``history`` list, when it has one, takes precedence over the
  sidecar's; a bare list is read as the history);
- ``stats.json`` (written with the statistics plots, in any of the plot folders below): each
  layer's final activation and gradient statistics and its dead units;
- the run's own plots (the file names in :data:`CAPTIONS`; not, say, the confusion matrix
  ``handgrad evaluate`` saves there) in the folder, in its ``plots/`` sub-folder and in the
  folder that ``metrics.json`` names as ``plots`` (one image per file name, the plots
  folder's first).

A folder without a checkpoint sidecar or ``metrics.json`` is not a run, and is refused.

and writes ``report.html`` there (or to ``out``) with every image embedded as a base64 data URI,
so the page can be mailed or archived alone. Nothing is fetched from the network; all text
is HTML-escaped. The page is written to a temporary file and renamed (never half a page).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handgrad._io import write_text
from handgrad._version import __version__
from handgrad.errors import HandgradError

CHECKPOINT_FORMAT_PREFIX = "handgrad-checkpoint/"

#: What each known plot shows, keyed by file stem; the page orders plots as listed here.
CAPTIONS: dict[str, str] = {
    "training": "Loss and metrics per epoch, and the training loss and learning rate per step.",
    "history": "Loss and metrics per epoch, and the training loss and learning rate per step.",
    "lr_finder": "Learning-rate finder: loss against a growing learning rate (log scale).",
    "confusion_matrix": "Confusion matrix on the validation set: true class (rows) against "
    "predicted class (columns).",
    "activation_stats": "Mean, standard deviation and fraction near zero of each layer's output "
    "over training. A stable standard deviation near 1 is what a good init aims at.",
    "gradient_stats": "The same for the gradient of the loss with respect to each layer's "
    "output, from the hand-written backward pass. Gradients that shrink layer after layer "
    "towards the input are vanishing.",
    "activation_histograms": "Histograms of each layer's output over training (the 'colorful "
    "dimension'): a bright bottom row in a ReLU layer means many zeros.",
    "gradient_histograms": "Histograms of log10 |gradient| of each layer's output over "
    "training (exact zeros left out).",
    "dead_units": "ReLU units that output zero for every validation example: they pass no "
    "gradient and cannot recover.",
    "confident_mistakes": "Validation images the model got wrong with the highest confidence.",
}


@dataclass
class RunInfo:
    """What :func:`read_run` found in a run folder."""

    run_dir: Path
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_path: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HandgradError(f"{path}: cannot be read ({exc}); check the file") from exc
    except json.JSONDecodeError as exc:
        raise HandgradError(
            f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); the file is truncated or "
            "corrupt, delete it or re-run training"
        ) from exc


def _find_sidecar(run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The newest checkpoint sidecar, preferring ``last.json`` (the end of the run)."""
    candidates = sorted(run_dir.glob("*.json"), key=lambda p: (p.stem != "last", p.name))
    for path in candidates:
        if path.name in ("metrics.json", "stats.json"):
            continue
        data = _load_json(path)
        if isinstance(data, dict) and str(data.get("format", "")).startswith(
            CHECKPOINT_FORMAT_PREFIX
        ):
            return path, data
    return None, {}


def _read_metrics(data: Any, path: Path) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """``(metrics, history or None)`` from the contents of ``metrics.json``."""
    metrics, rows = ({}, data) if isinstance(data, list) else (data, None)
    if isinstance(data, dict):
        rows = data.get("history")
    if not isinstance(metrics, dict) or (
        rows is not None
        and (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows))
    ):
        raise HandgradError(
            f"{path}: expected the run's metrics (a JSON object) or per-epoch rows (a list); "
            "re-run training to write it again"
        )
    return {k: v for k, v in metrics.items() if k != "history"}, rows


def _plot_key(path: Path) -> tuple[int, str]:
    order = list(CAPTIONS)
    return (order.index(path.stem) if path.stem in order else len(order), path.name)


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Collect the sidecar, history, statistics and plots of ``run_dir`` (see the module doc)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise HandgradError(
            f"{root}: no such run folder; give the --out folder of a 'handgrad train' run"
        )
    info = RunInfo(root)
    info.sidecar_path, info.sidecar = _find_sidecar(root)
    recorder = info.sidecar.get("callbacks", {}).get("recorder", {})
    if isinstance(recorder, dict) and isinstance(recorder.get("history"), list):
        info.history = [r for r in recorder["history"] if isinstance(r, dict)]
    metrics_path = root / "metrics.json"
    if metrics_path.is_file():
        info.metrics, rows = _read_metrics(_load_json(metrics_path), metrics_path)
        if rows is not None:
            info.history = rows
    folders = [root, root / "plots"]
    if isinstance(info.metrics.get("plots"), str):  # where 'handgrad train --plots' wrote them
        folders.append(Path(info.metrics["plots"]))
    for stats_path in reversed([folder / "stats.json" for folder in folders]):
        if stats_path.is_file():
            stats = _load_json(stats_path)
            info.stats = stats if isinstance(stats, dict) else {}
            break
    pngs = {  # later wins
        p.name: p for folder in folders for p in sorted(folder.glob("*.png")) if p.stem in CAPTIONS
    }
    info.plots = sorted(pngs.values(), key=_plot_key)
    if not (info.sidecar or metrics_path.is_file()):
        raise HandgradError(
            f"{root}: not a training run (no checkpoint sidecar or metrics.json); give the "
            f"--out folder of a run, or train into it first ('handgrad train --out {root}')"
        )
    return info


# ---------------------------------------------------------------------------- the HTML page
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f5f5f5}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;
padding:.5rem .9rem;min-width:9rem}.card b{display:block;font-size:1.3rem}
figure{margin:1.2rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.92rem}code{background:#f5f5f5;padding:0 .25rem}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.1f}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, f"{key}.")
        else:
            rows.append((key, v))
    return rows


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(_fmt(c))}</td>'
            if isinstance(c, int | float) and not isinstance(c, bool)
            else f"<td>{_esc(_fmt(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _history_table(history: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for row in history for k in row))
    return _table(cols, [[row.get(c, "") for c in cols] for row in history], "history")


def _summary_cards(info: RunInfo) -> str:
    cards: list[tuple[str, Any]] = []
    if info.history:
        last = info.history[-1]
        cards.append(("epochs", last.get("epoch", len(info.history))))
        for k, v in last.items():
            if k.startswith(("valid_", "train_", "test_")) and isinstance(v, int | float):
                cards.append((f"final {k}", v))
        accs = [r["valid_accuracy"] for r in info.history if "valid_accuracy" in r]
        if accs:
            cards.append(("best valid_accuracy", max(accs)))
        secs = [r["seconds"] for r in info.history if isinstance(r.get("seconds"), int | float)]
        if secs:
            cards.append(("training time (s)", float(sum(secs))))
    else:
        final = info.metrics or info.sidecar.get("metrics") or {}
        cards += [(k, v) for k, v in final.items() if isinstance(v, int | float)]
    best = info.metrics.get("best")
    if isinstance(best, Mapping) and best.get("epoch") is not None:
        cards.append(("best epoch", best["epoch"]))
    if isinstance(info.metrics.get("train_seconds"), int | float):
        cards = [c for c in cards if c[0] != "training time (s)"]
        cards.append(("training time (s)", info.metrics["train_seconds"]))
    if info.metrics.get("stopped_early"):
        cards.append(("stopped early", info.metrics["stopped_early"]))
    if "step" in info.sidecar:
        cards.append(("optimizer steps", info.sidecar["step"]))
    return (
        '<div class="cards">'
        + "".join(f'<div class="card">{_esc(k)}<b>{_esc(_fmt(v))}</b></div>' for k, v in cards)
        + "</div>"
    )


def _pct(fraction: Any) -> Any:
    """A fraction as a percentage with one decimal (``""`` when missing)."""
    return round(100 * fraction, 1) if isinstance(fraction, int | float) else ""


def _stats_section(stats: Mapping[str, Any]) -> str:
    parts = []
    layers = stats.get("layers")
    if isinstance(layers, list) and layers:
        header = ["layer", "act mean", "act std", "act % near 0", "grad std", "grad % near 0"]
        rows = [
            [
                layer.get("label", layer.get("name", "?")),
                layer.get("act_mean", ""),
                layer.get("act_std", ""),
                _pct(layer.get("act_near_zero")),
                layer.get("grad_std", ""),
                _pct(layer.get("grad_near_zero")),
            ]
            for layer in layers
            if isinstance(layer, Mapping)
        ]
        parts.append(
            "<p>Each layer's statistics at the last recorded training batch "
            "(activation = the layer's output; gradient = dL/d(output)).</p>"
            + _table(header, rows, "stats")
        )
    dead = stats.get("dead_units")
    if isinstance(dead, list) and dead:
        rows = [
            [d.get("label", "?"), d.get("dead", ""), d.get("units", ""), _pct(d.get("fraction"))]
            for d in dead
            if isinstance(d, Mapping)
        ]
        parts.append(
            "<p>ReLU units never active on the validation set after training.</p>"
            + _table(["layer", "dead units", "units", "% dead"], rows, "dead")
        )
    return "".join(parts)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.stem, "")
    return (
        f'<figure id="plot-{_esc(path.stem)}"><img alt="{_esc(path.stem)}" '
        f'src="data:image/png;base64,{data}"><figcaption><code>{_esc(path.name)}</code> '
        f"{_esc(caption)}</figcaption></figure>"
    )


def render_report(info: RunInfo, *, title: str | None = None) -> str:
    """The report page for ``info`` as one HTML string."""
    side = info.sidecar
    title = title or f"handgrad run: {info.run_dir.resolve().name}"
    sub = [f"generated {time.strftime('%Y-%m-%d %H:%M')} by handgrad {__version__}"]
    if info.sidecar_path is not None:
        sub.append(f"from {info.sidecar_path.name}")
    if side.get("saved_at"):
        sub.append(f"checkpoint saved {side['saved_at']}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">{_esc(" · ".join(sub))}</p>',
        "<h2>Summary</h2>",
        _summary_cards(info),
    ]
    config_rows: list[tuple[str, Any]] = []
    # The optimizer's saved state is left out: the config already names it and its settings.
    for section in ("config", "model", "loss", "data", "versions"):
        value = side.get(section, info.metrics.get(section))
        if isinstance(value, str | int | float):
            config_rows.append((section, value))
        elif isinstance(value, Mapping):
            config_rows += _flatten(value, f"{section}.")
    if config_rows:
        parts += ["<h2>Configuration</h2>", _kv_table(config_rows)]
    if info.history:
        parts += ["<h2>Metrics per epoch</h2>", _history_table(info.history)]
    stats_html = _stats_section(info.stats)
    if stats_html:
        parts += ["<h2>Inside the network</h2>", stats_html]
    if info.plots:
        parts.append("<h2>Plots</h2>")
        parts += [_figure(p) for p in info.plots]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    info = read_run(run_dir)
    target = Path(out) if out is not None else info.run_dir / "report.html"
    return write_text(target, render_report(info, title=title))
