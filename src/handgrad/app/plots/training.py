"""Plots of a training run: loss and metric curves, the LR-finder curve, a confusion matrix.

The training layer records (``Recorder``, ``LRFinder``); these functions draw what it recorded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handgrad.app.plots.base import new_figure, save_png

if TYPE_CHECKING:
    from handgrad.train.callbacks import LRFinder, Recorder

PathLike = str | os.PathLike[str]


def _smooth(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (the first points are not damped)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_history(recorder: Recorder, path: PathLike, *, title: str = "training") -> Path:
    """Three panels against the training step: the loss (every step, smoothed, and each epoch's
    train and validation mean), the validation metrics per epoch, and the learning rate, as
    ``recorder`` recorded them."""
    history, step_loss, step_lr = recorder.history, recorder.step_loss, recorder.step_lr
    fig, (ax_loss, ax_metric, ax_lr) = new_figure(
        8.0, 9.0, nrows=3, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]}
    )
    steps_per_epoch = len(step_loss) / len(history) if history else 1.0
    epoch_end = [row["epoch"] * steps_per_epoch for row in history]

    if step_loss:
        ax_loss.plot(
            range(1, len(step_loss) + 1),
            step_loss,
            color="C0",
            alpha=0.25,
            lw=0.8,
            label="train loss (each step)",
        )
        ax_loss.plot(
            range(1, len(step_loss) + 1),
            _smooth(step_loss),
            color="C0",
            lw=1.5,
            label="train loss (smoothed)",
        )
    for key, color, label in (
        ("train_loss", "C0", "train loss (epoch mean)"),
        ("valid_loss", "C1", "validation loss"),
    ):
        pts = [(x, row[key]) for x, row in zip(epoch_end, history, strict=True) if key in row]
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), "o-", color=color, ms=4, lw=1.2, label=label)
    finite = [v for v in step_loss if math.isfinite(v)]
    if finite and max(finite) / max(min(finite), 1e-12) > 30:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title)

    metric_keys = [k for k in (history[-1] if history else {}) if k.startswith("valid_")]
    metric_keys = [k for k in metric_keys if k != "valid_loss"]
    for i, key in enumerate(metric_keys):
        pts = [(x, row[key]) for x, row in zip(epoch_end, history, strict=True) if key in row]
        ax_metric.plot(
            *zip(*pts, strict=True), "o-", color=f"C{i + 2}", ms=4, label=key.replace("_", " ")
        )
        best = max(pts, key=lambda p: p[1])
        ax_metric.annotate(
            f"{best[1]:.4f}",
            best,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    if metric_keys:
        ax_metric.legend(loc="lower right", fontsize=8)
    else:
        ax_metric.text(
            0.5,
            0.5,
            "no validation metric recorded",
            ha="center",
            va="center",
            transform=ax_metric.transAxes,
            color="0.5",
        )
    ax_metric.margins(y=0.2)
    ax_metric.set_ylabel(
        "validation "
        + (metric_keys[0].removeprefix("valid_") if len(metric_keys) == 1 else "metric")
    )
    ax_metric.grid(alpha=0.3)

    if step_lr:
        ax_lr.plot(range(1, len(step_lr) + 1), step_lr, color="C7")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("training step (optimizer updates); dots mark the end of each epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)
    fig.align_ylabels()
    return save_png(fig, path)


def plot_lr_find(finder: LRFinder, path: PathLike, *, title: str = "learning-rate finder") -> Path:
    """The range test's loss against learning rate (log scale), raw and smoothed, the suggested
    rate marked."""
    lrs, losses, smoothed = finder.lrs, finder.losses, finder.smoothed
    suggestion = finder.suggestion
    fig, ax = new_figure()
    n = len(smoothed)
    finite = [(lr, v) for lr, v in zip(lrs[:n], losses[:n], strict=True) if math.isfinite(v)]
    if finite:
        ax.plot(*zip(*finite, strict=True), color="C0", alpha=0.3, lw=0.8, label="loss (each step)")
    ax.plot(lrs[:n], smoothed, color="C0", lw=1.6, label="loss (smoothed)")
    if suggestion is not None:
        i = int(np.argmin(np.abs(np.log(np.asarray(lrs[:n])) - math.log(suggestion))))
        ax.axvline(suggestion, color="C3", ls="--", lw=1)
        ax.plot(
            [lrs[i]],
            [smoothed[i]],
            "o",
            color="C3",
            ms=7,
            label=f"suggested lr {suggestion:.2e} (minimum / 10)",
        )
    ax.set_xscale("log")
    if smoothed:
        # from below the lowest point to a little above the start: the divergence at the end
        # would otherwise squash the interesting part of the curve
        lo = min([*smoothed, *(v for _, v in finite)])
        start = max(smoothed[0], min(smoothed))
        span = max(start - lo, 1e-3)
        ax.set_ylim(lo - 0.05 * span, start + 0.4 * span)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=9)
    return save_png(fig, path)


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: PathLike, *, title: str = "confusion matrix"
) -> Path:
    """Counts of (true class, predicted class); the diagonal holds the correct predictions."""
    matrix = np.asarray(matrix)
    k = len(classes)
    size = max(5.0, 0.55 * k + 2.5)
    fig, ax = new_figure(size + 1.0, size)
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    ax.set_xticks(
        range(k),
        classes,
        rotation=45 if max(map(len, classes)) > 2 else 0,
        ha="right" if max(map(len, classes)) > 2 else "center",
    )
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = matrix.sum()
    acc = np.trace(matrix) / total if total else float("nan")
    ax.set_title(f"{title}\n{int(total):,} images, accuracy {acc:.2%}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    return save_png(fig, path)
