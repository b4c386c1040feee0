"""Figure helpers shared by every plot: headless backend, consistent size, atomic PNG writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # plots are files; never ask for a display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

DPI = 100


def new_figure(width: float = 8.0, height: float = 5.0, **subplots: Any) -> tuple[Figure, Any]:
    """A figure of ``width`` x ``height`` inches (800 x 500 px at the default DPI) and its axes."""
    fig, axes = plt.subplots(figsize=(width, height), dpi=DPI, **subplots)
    return fig, axes


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as PNG through a temporary file and a rename (never a half
    file), then close it to free its memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
        # mkstemp creates 0600 files; a plot is as readable as any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
