"""Figure helpers shared by every plot: headless backend, consistent size, atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

from handgrad._io import atomic_file

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
    try:
        with atomic_file(path, "wb", suffix=".png", fsync=False) as f:
            fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
