"""``handgrad runs [DIR]``: the run folders in DIR (default runs/), one line each with their
key metrics.

    handgrad runs                 # every run under runs/
    handgrad runs experiments/    # another folder of runs

A run folder is one that ``handgrad train --out`` wrote: a finished run has metrics.json; one
that was stopped or killed has only its last.json (and history.csv with ``--logger csv``).
Other folders are not listed.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handgrad.app.progress import say
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError

COLUMNS = ("run", "model", "epochs", "train_loss", "valid_loss", "valid_accuracy", "best", "state")


def add(sub: Any) -> None:
    p = sub.add_parser(
        "runs",
        help="list the run folders in DIR with their key metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir", metavar="DIR", nargs="?", default="runs", help="folder of runs (default: runs)"
    )
    p.set_defaults(run=run)


@dataclass(frozen=True)
class RunRow:
    """One run's line: its folder, what it reached, and whether it finished."""

    name: str
    model: str
    epochs: int | None
    metrics: dict[str, float]
    best: str
    state: str  # done, stopped early, paused at E/N, stopped (killed), unreadable: <why>

    def cells(self) -> tuple[str, ...]:
        values = (self.metrics.get(k) for k in COLUMNS[3:6])
        numbers = tuple("-" if v is None else f"{v:.4f}" for v in values)
        epochs = "-" if self.epochs is None else str(self.epochs)
        return (self.name, self.model, epochs, *numbers, self.best, self.state)


def read_runs(folder: Path) -> list[RunRow]:
    """Every run folder directly in ``folder``, by name (run names start with their date)."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise HandgradError(
            f"{folder}: {what}; give the folder that holds your run folders (default runs/)"
        )
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            row = read_run_row(sub)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            row = RunRow(sub.name, "-", None, {}, "-", f"unreadable: {exc}")
        if row is not None:
            rows.append(row)
    return rows


def read_run_row(run: Path) -> RunRow | None:
    """The line for ``run``, or ``None`` when it is not a run folder."""
    last = json.loads((run / "last.json").read_text()) if (run / "last.json").is_file() else None
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
    if m is not None and last is not None and (last.get("epoch") or 0) > (m.get("epoch") or 0):
        m = None  # a resumed run went on and stopped before its end: its checkpoint is newer
    if m is not None:
        best = m.get("best") or {}
        text = "-"
        if best.get("valid_accuracy") is not None:
            text = f"{best['valid_accuracy']:.4f} @{best['epoch']}"
        epochs, planned = m.get("epoch"), (m.get("config") or {}).get("epochs")
        state = "done"
        if m.get("stopped_early"):
            state = "stopped early"
        elif epochs is not None and planned is not None and epochs < planned:
            state = f"paused at {epochs}/{planned}"
        return RunRow(run.name, _model(m), epochs, _numbers(m), text, state)
    if last is not None:
        info = last
        history = info.get("callbacks", {}).get("recorder", {}).get("history") or [{}]
        metrics = _numbers(history[-1]) or _numbers(info.get("metrics", {}))
        return RunRow(run.name, _model(info), info.get("epoch"), metrics, "-", "stopped")
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        last = {k: float(v) for k, v in (rows[-1] if rows else {}).items() if v}
        epochs = int(last["epoch"]) if "epoch" in last else None
        return RunRow(run.name, "-", epochs, _numbers(last), "-", "stopped")
    return None


def _model(info: dict[str, Any]) -> str:
    model = info.get("model")
    return str(model.get("name", "-")) if isinstance(model, dict) else "-"


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k in COLUMNS and isinstance(v, int | float)}


def format_table(rows: list[RunRow]) -> list[str]:
    """Left-aligned text columns, numbers right-aligned, two spaces apart."""
    table = [COLUMNS, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5}
    return [
        "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    ]


def run(args: argparse.Namespace) -> int:
    console = make_console()
    folder = Path(args.dir)
    rows = read_runs(folder)
    if not rows:
        say(console, f"no runs in {folder} (handgrad train --out {folder}/NAME writes one)")
        return 0
    for line in format_table(rows):
        say(console, line)
    return 0
