"""The runs folder as the server sees it: run names checked before any path is made from them,
the runs with their histories (through ``handgrad runs``' :func:`read_runs` and the report's
:func:`read_run`), and which checkpoint ``handgrad serve`` starts with.

A run is named by its folder's name alone. A name is accepted only when it is a plain file
name (letters, digits, ``.``, ``_``, ``-``; not starting with a dot) *and* the folder it names,
with every link resolved, sits directly in the runs folder: no ``..``, no absolute path, no
symbolic link out of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from handgrad.app.commands.runs import read_runs
from handgrad.app.report import read_run
from handgrad.errors import HandgradError

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
CHECKPOINTS = ("best", "last")


class NotFound(LookupError):
    """No such run (or checkpoint) in the runs folder."""


def run_path(root: Path, name: Any) -> Path:
    """The folder of run ``name`` inside ``root``, or :class:`NotFound`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise NotFound(f"{name!r} is not a run name (a folder name in the runs folder)")
    base = root.resolve()
    path = (base / name).resolve()
    if path.parent != base or not path.is_dir():
        raise NotFound(f"no run {name!r} in {root}")
    return path


def checkpoint_path(root: Path, name: Any, which: Any = "best") -> Path:
    """``best.safetensors`` or ``last.safetensors`` of run ``name``."""
    if which not in CHECKPOINTS:
        raise NotFound(f"checkpoint {which!r}: choose best or last")
    path = run_path(root, name) / f"{which}.safetensors"
    if not path.is_file():
        raise NotFound(f"run {name!r} has no {which}.safetensors")
    return path


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run in ``root``: ``handgrad runs``' row, its epoch history and what it holds."""
    if not root.is_dir():
        return []
    out = []
    for row in read_runs(root):
        folder = root / row.name
        try:
            history = read_run(folder).history
        except HandgradError:
            history = []
        out.append(
            {
                "name": row.name,
                "model": row.model,
                "epochs": row.epochs,
                "metrics": row.metrics,
                "best": row.best,
                "state": row.state,
                "history": history,
                "checkpoints": [c for c in CHECKPOINTS if (folder / f"{c}.safetensors").is_file()],
            }
        )
    return out


def newest_checkpoint(root: Path) -> Path | None:
    """The best (else last) checkpoint of the newest run in ``root`` that has one."""
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)]
    for run in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True):
        for which in CHECKPOINTS:
            if (run / f"{which}.safetensors").is_file():
                return run / f"{which}.safetensors"
    return None
