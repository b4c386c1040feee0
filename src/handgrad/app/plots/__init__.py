"""Plots written to PNG with matplotlib's Agg backend (no display needed).

``base`` holds the shared figure helpers; ``training`` the curves of a run (loss, metrics, LR
finder, confusion matrix); ``stats`` the per-layer activation and gradient statistics.
"""

from handgrad.app.plots.base import new_figure, save_png

__all__ = ["new_figure", "save_png"]
