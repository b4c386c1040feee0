"""Where a command writes, checked before any work starts, and a run folder's old files.

A training run that dies at the end because ``--plots`` names a file, or that silently
replaces last week's run, loses work. So every output path is checked first (one line, exit
status 2, nothing written), and ``--out`` onto an existing run needs ``--resume`` (continue it)
or ``--overwrite`` (replace it: :func:`clear_run` removes all the old run's files first, so
nothing of two runs mixes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from handgrad.errors import HandgradError

#: Files that make a folder a training run (``handgrad train --out`` writes them).
RUN_MARKERS = ("last.json", "best.json", "last.safetensors", "best.safetensors", "metrics.json")
#: Everything a run and the commands that follow it leave in its folder, removed by --overwrite.
RUN_OUTPUTS = (
    *RUN_MARKERS,
    *("history.png", "history.csv", "tensorboard", "report.html", "plots", "confusion-*.png"),
    ".*.tmp",
)


def check_folder(path: str | os.PathLike[str], option: str, *, given: str | None = None) -> Path:
    """``path`` is, or can become, a folder this process may write in; else one line naming
    ``option`` and its value (``given``, default ``path``). Only a probe file is created (and
    removed) in the nearest existing folder."""
    given = given or str(path)
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HandgradError(f"{option} {given}: {existing} is a file, not a folder; give a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".handgrad-probe-", dir=existing)
    except OSError as exc:
        raise HandgradError(
            f"{option} {given}: cannot write in {existing} ({exc.strerror or exc}); "
            "give a writable folder"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return folder


def check_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` can be written as a file: not a folder, and its folder writable."""
    target = Path(path)
    if target.is_dir():
        raise HandgradError(f"{option} {path}: is a folder; give a file name")
    check_folder(target.parent, option, given=str(path))
    return target


def existing_run(folder: Path) -> Path | None:
    """The first file that makes ``folder`` a training run, or ``None``."""
    return next((folder / n for n in RUN_MARKERS if (folder / n).is_file()), None)


def check_train_outputs(
    out: Path, plots: str | None, *, resumed_from: Path | None, overwrite: bool
) -> None:
    """``handgrad train``'s folders: ``--out`` writable and holding no run but the one resumed
    from ``resumed_from`` (unless ``overwrite``), ``--plots`` writable."""
    check_folder(out, "--out")
    if plots:
        check_folder(plots, "--plots")
    found = existing_run(out)
    if found is None or overwrite:
        return
    if resumed_from is not None and out.resolve() == resumed_from.resolve():
        return
    raise HandgradError(
        f"--out {out}: already holds a run ({found.name}); continue it with --resume "
        f"{out / 'last.safetensors'}, replace it with --overwrite, or give another --out"
    )


def clear_run(out: Path) -> list[Path]:
    """Remove the old run's files from ``out`` (see :data:`RUN_OUTPUTS`); other files stay."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(out.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed
