"""Plots of what happens inside a network while it trains: per-layer statistics of activations
and gradients (from :mod:`handgrad.train.stats`), dead ReLU units, and the validation images
the model got most confidently wrong. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import EngFormatter, MaxNLocator
from torch import Tensor

from handgrad._io import write_text
from handgrad.app.plots.base import new_figure, save_png
from handgrad.nn.module import Module
from handgrad.train.stats import DeadUnits, LayerStats, dead_units, predict_logits, stats_summary

PathLike = str | os.PathLike[str]

#: Inches per subplot row of the histogram grid, and the grid's width.
HIST_ROW_HEIGHT, HIST_WIDTH = 2.0, 11.0


def _mark_epochs(ax: Any, layers: Sequence[LayerStats], color: str = "0.45") -> str:
    """Dotted vertical lines where epochs start; returns the x-axis label that explains them."""
    starts = layers[0].epoch_starts
    for x in starts:
        ax.axvline(x - 0.5, color=color, ls=":", lw=1.2, zorder=3)
    return "training batch (dotted: start of an epoch)" if starts else "training batch"


def _colors(n: int) -> list[tuple[float, ...]]:
    """Distinct colours for up to 20 layers, then a gradient (deeper layers darker)."""
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [cmap(i) for i in range(n)]
    cmap = plt.get_cmap("viridis")
    return [cmap(i / (n - 1)) for i in range(n)]


def _check(stats: Mapping[str, LayerStats], what: str) -> list[LayerStats]:
    layers = list(stats.values())
    if not layers:
        raise ValueError(f"{what}: no layer statistics recorded (did the model train?)")
    return layers


def _noun(layers: Sequence[LayerStats]) -> str:
    return "gradient dL/d(output)" if layers[0].what == "gradient" else "activation (output)"


def plot_layer_stats(
    stats: Mapping[str, LayerStats], path: PathLike, *, title: str | None = None
) -> Path:
    """Three panels over training, one line per layer: the mean, the standard deviation and the
    fraction of elements near zero of each layer's activations (or gradients).

    Gradient standard deviations are drawn on a log axis (they span orders of magnitude).
    Size: 15 x 4.6 inches.
    """
    layers = _check(stats, "plot_layer_stats")
    grad = layers[0].what == "gradient"
    fig, axes = new_figure(15, 4.6, ncols=3)
    colors = _colors(len(layers))
    for s, c in zip(layers, colors, strict=True):
        steps = s.steps.numpy()
        axes[0].plot(steps, s.mean.numpy(), color=c, label=s.label)
        axes[1].plot(steps, s.std.numpy(), color=c)
        axes[2].plot(steps, 100 * s.near_zero.numpy(), color=c)
    noun = _noun(layers)
    axes[0].set_title(f"mean of {noun}")
    axes[1].set_title(f"standard deviation of {noun}")
    zero = layers[0].threshold
    axes[2].set_title(f"% of elements near zero (|v| < {zero:g})")
    axes[0].axhline(0.0, color="0.6", lw=0.8, zorder=0)
    axes[0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    if grad or _spans_decades(layers):
        axes[1].set_yscale("log")
    axes[2].set_ylim(-2, 102)
    axes[2].set_ylabel("% of elements")
    for ax in axes:
        ax.set_xlabel(_mark_epochs(ax, layers))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gradient value" if grad else "activation value")
    axes[1].set_ylabel("gradient value" if grad else "activation value")
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="layer", frameon=False)
    fig.suptitle(title or f"Per-layer {noun} statistics over training")
    fig.tight_layout()
    return save_png(fig, path)


def _spans_decades(layers: Sequence[LayerStats]) -> bool:
    stds = torch.cat([s.std for s in layers])
    stds = stds[stds > 0]
    return bool(stds.numel()) and float(stds.max() / stds.min()) > 100


def hist_grid_shape(n_layers: int) -> tuple[int, int]:
    """(rows, columns) of the histogram grid: one column up to 4 layers, else two."""
    cols = 1 if n_layers <= 4 else 2
    return math.ceil(n_layers / cols), cols


def hist_figure_size(n_layers: int) -> tuple[float, float]:
    """Inches (width, height) of :func:`plot_histograms` for ``n_layers`` layers."""
    rows, _ = hist_grid_shape(n_layers)
    return HIST_WIDTH, HIST_ROW_HEIGHT * rows + 0.9


def plot_histograms(
    stats: Mapping[str, LayerStats], path: PathLike, *, title: str | None = None
) -> Path:
    """The "colorful dimension" plot: for each layer, an image whose column ``t`` is the
    histogram of that layer's activations (or ``log10 |gradient|``) at recorded batch ``t``,
    coloured by ``log(1 + count)`` so that the sparse tails stay visible.

    A healthy layer shows a steady band; mass piling into the bottom row of a ReLU layer means
    units that output zero; a band sliding down (gradients) means vanishing gradients. Values
    beyond a layer's range are counted in its top or bottom row. Size: :func:`hist_figure_size`.
    """
    layers = _check(stats, "plot_histograms")
    rows, cols = hist_grid_shape(len(layers))
    fig, axes = new_figure(
        *hist_figure_size(len(layers)), nrows=rows, ncols=cols, squeeze=False, layout="constrained"
    )
    grad = layers[0].what == "gradient"
    image = None
    for ax, s in zip(axes.flat, layers, strict=False):
        steps = s.steps.numpy()
        # Each column is centred on its batch: half a recording interval on either side.
        half = 0.5 * (float(steps[1] - steps[0]) if len(steps) > 1 else 1.0)
        x0, x1 = float(steps[0]) - half, float(steps[-1]) + half
        counts = np.log1p(s.hist.numpy().T)  # (bins, T)
        image = ax.imshow(
            counts,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            extent=(x0, x1, float(s.edges[0]), float(s.edges[-1])),
            interpolation="nearest",
        )
        ax.set_title(s.label, fontsize=10, loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not grad:  # 20k, 1M: no offset label ("1e6") to collide with the title
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    for ax in axes.flat[len(layers) :]:
        ax.set_visible(False)
    xlabel = "training batch"
    for ax in axes.flat[: len(layers)]:
        xlabel = _mark_epochs(ax, layers, color="white")
    fig.supxlabel(xlabel)
    fig.supylabel("log10 |gradient|" if grad else "activation value")
    noun = _noun(layers)
    note = "exact zeros left out, " if grad else ""
    fig.suptitle(
        title
        or f"Histograms of each layer's {noun} over training\n"
        f"(one column per recorded batch; {note}values beyond the range in the edge rows)"
    )
    if image is not None:  # (the constrained layout leaves room for the two-line title)
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
        bar.set_label("log(1 + elements in bin)")
    return save_png(fig, path)


def plot_stats_comparison(
    runs: Mapping[str, Mapping[str, LayerStats]],
    path: PathLike,
    *,
    quantity: str = "std",
    title: str | None = None,
) -> Path:
    """One panel per run (e.g. ``{"randn init": ..., "Kaiming init": ...}``), sharing a log
    y axis: ``quantity`` (``"std"`` or ``"mean"``, ``"near_zero"``) of every layer over training.
    Size: 6 inches per run wide, 4.6 high."""
    if quantity not in ("std", "mean", "near_zero"):
        raise ValueError(f"quantity must be 'std', 'mean' or 'near_zero', got {quantity!r}")
    if not runs:
        raise ValueError("plot_stats_comparison: no runs given")
    fig, axes = new_figure(6 * len(runs), 4.6, ncols=len(runs), sharey=True, squeeze=False)
    first = None
    for ax, (run, stats) in zip(axes[0], runs.items(), strict=True):
        layers = _check(stats, f"plot_stats_comparison[{run!r}]")
        first = first or layers
        for s, c in zip(layers, _colors(len(layers)), strict=True):
            values = getattr(s, quantity).numpy()
            ax.plot(s.steps.numpy(), 100 * values if quantity == "near_zero" else values, color=c)
        ax.set_title(run)
        ax.set_xlabel(_mark_epochs(ax, layers))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    assert first is not None
    if quantity == "std":
        axes[0, 0].set_yscale("log")
    noun = _noun(first)
    label = {"std": "standard deviation", "mean": "mean", "near_zero": "% near zero"}[quantity]
    axes[0, 0].set_ylabel(f"{label} of {noun}")
    handles = [plt.Line2D([], [], color=c) for c in _colors(len(first))]
    fig.legend(
        handles,
        [s.label for s in first],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        title="layer",
        frameon=False,
    )
    fig.suptitle(title or f"{label.capitalize()} of each layer's {noun}, run by run")
    fig.tight_layout()
    return save_png(fig, path)


def plot_dead_units(
    reports: Mapping[str, Sequence[DeadUnits]] | Sequence[DeadUnits],
    path: PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Bars of the % of units of each ReLU layer that were never active (output <= 0 for every
    example), one bar per layer and per model state (e.g. ``{"at init": ..., "trained": ...}``),
    each labelled with dead / total. Size: 8 x 4.6 inches."""
    groups = dict(reports) if isinstance(reports, Mapping) else {"": list(reports)}
    groups = {k: list(v) for k, v in groups.items()}
    names = list(dict.fromkeys(d.label for v in groups.values() for d in v))
    fig, ax = new_figure(8, 4.6)
    if not names:
        ax.text(0.5, 0.5, "no ReLU layers in this model", ha="center", va="center")
        ax.set_axis_off()
    width = 0.8 / max(len(groups), 1)
    for gi, (group, items) in enumerate(groups.items()):
        by_name = {d.label: d for d in items}
        xs = [i + (gi - (len(groups) - 1) / 2) * width for i, n in enumerate(names) if n in by_name]
        ds = [by_name[n] for n in names if n in by_name]
        bars = ax.bar(xs, [100 * d.fraction for d in ds], width, label=group or None)
        ax.bar_label(bars, [f"{d.dead}/{d.units}" for d in ds], fontsize=8, padding=2)
    if names:
        ax.set_xticks(range(len(names)), names)
        top = max((100 * d.fraction for v in groups.values() for d in v), default=0.0)
        ax.set_ylim(0, max(10.0, top * 1.2))
        ax.set_ylabel("% of units never active")
        ax.set_xlabel("ReLU layer (a unit is a feature, or a channel of an image-shaped output)")
        ax.grid(axis="y", alpha=0.3)
        if any(groups):
            ax.legend(frameon=False)
    ax.set_title(title or "Dead ReLU units: never positive on any example (bars: dead/total)")
    fig.tight_layout()
    return save_png(fig, path)


def confident_mistakes(logits: Tensor, y: Tensor, n: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the (at most) ``n`` wrong predictions with the highest predicted probability,
    most confident first, with their predicted class and its probability."""
    probs = torch.softmax(logits.detach().float(), dim=1)  # (N, C)
    conf, pred = probs.max(1)  # (N,), (N,)
    wrong = (pred != y).nonzero().flatten()
    order = conf[wrong].argsort(descending=True)[:n]
    idx = wrong[order]
    return idx, pred[idx], conf[idx]


def mistakes_figure_size(n: int) -> tuple[float, float]:
    """Inches (width, height) of :func:`plot_confident_mistakes` showing ``n`` images."""
    cols = min(max(n, 1), 8)
    return max(1.6 * cols, 6.4), 1.9 * math.ceil(max(n, 1) / cols) + 0.6  # room for the title


def plot_confident_mistakes(
    images: Tensor,
    labels: Tensor,
    logits: Tensor,
    path: PathLike,
    *,
    classes: Sequence[str] | None = None,
    image_shape: tuple[int, ...] = (1, 28, 28),
    n: int = 16,
    title: str | None = None,
) -> Path:
    """A grid of the validation images the model got wrong with the highest confidence, each
    titled with the predicted class and probability and the true class.

    ``images`` (N, prod(image_shape)) or (N, *image_shape); ``labels`` (N,); ``logits`` (N, C).
    Size: :func:`mistakes_figure_size` of the number of mistakes shown.
    """
    if not (images.shape[0] == labels.shape[0] == logits.shape[0]):
        raise ValueError(
            f"plot_confident_mistakes: {images.shape[0]} images, {labels.shape[0]} labels and "
            f"{logits.shape[0]} rows of logits; give one of each per example"
        )
    idx, pred, conf = confident_mistakes(logits, labels, n)
    shown = max(len(idx), 1)
    cols = min(shown, 8)
    rows = math.ceil(shown / cols)
    fig, axes = new_figure(*mistakes_figure_size(len(idx)), nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    name = (lambda c: classes[c]) if classes else str
    for ax, i, p, c in zip(axes.flat, idx.tolist(), pred.tolist(), conf.tolist(), strict=False):
        img = images[i].detach().float().cpu().reshape(image_shape)  # (C, H, W)
        if img.shape[0] in (1, 3):
            img = img.permute(1, 2, 0)  # (H, W, C) for imshow
        img = img.squeeze(-1) if img.shape[-1] == 1 else img
        ax.imshow(img.numpy(), cmap="gray_r")
        # Rounded down, so that a probability below 1 never reads "100%".
        pct = f"{math.floor(1000 * c) / 10:.1f}" if c > 0.99 else f"{math.floor(100 * c)}"
        truth = name(int(labels[i]))
        ax.set_title(f"pred {name(p)} ({pct}%)\ntrue {truth}", fontsize=9, color="C3")
    if len(idx) == 0:
        axes[0, 0].text(0.5, 0.5, "every example was classified correctly", ha="center")
    fig.suptitle(
        title
        or (
            f"Most confident mistakes on validation ({len(idx)} shown, most confident first)"
            if len(idx)
            else "No mistakes on validation"
        )
    )
    fig.tight_layout()
    return save_png(fig, path)


def save_stats_plots(
    out_dir: PathLike,
    *,
    activations: Mapping[str, LayerStats] | None = None,
    gradients: Mapping[str, LayerStats] | None = None,
    model: Module | None = None,
    valid: tuple[Tensor, Tensor] | None = None,
    images: Tensor | None = None,
    classes: Sequence[str] | None = None,
    image_shape: tuple[int, ...] = (1, 28, 28),
) -> list[Path]:
    """Write every statistics plot that the given inputs allow into ``out_dir``, and
    ``stats.json`` (see :func:`handgrad.train.stats.stats_summary`) beside them:

    ``activation_stats.png``, ``activation_histograms.png`` (from ``activations``),
    ``gradient_stats.png``, ``gradient_histograms.png`` (from ``gradients``), and, given the
    trained ``model`` and the validation set ``valid = (x, y)`` as the model takes it:
    ``dead_units.png`` and, for a classifier, ``confident_mistakes.png`` (showing ``images``,
    the same rows before any normalisation, when given, else ``x``). Returns the paths written.
    """
    out = Path(out_dir)
    written: list[Path] = []
    if activations:
        written.append(plot_layer_stats(activations, out / "activation_stats.png"))
        written.append(plot_histograms(activations, out / "activation_histograms.png"))
    if gradients:
        written.append(plot_layer_stats(gradients, out / "gradient_stats.png"))
        written.append(plot_histograms(gradients, out / "gradient_histograms.png"))
    dead = None
    if model is not None and valid is not None:
        x, y = valid
        dead = dead_units(model, x)
        written.append(
            plot_dead_units(
                {"after training": dead},
                out / "dead_units.png",
                title=f"Dead ReLU units: never positive on any of the {len(x):,} validation "
                "images (bars: dead/total)",
            )
        )
        logits = predict_logits(model, x)
        if logits.ndim == 2 and logits.shape[1] > 1:  # a classifier
            written.append(
                plot_confident_mistakes(
                    x if images is None else images,
                    y,
                    logits,
                    out / "confident_mistakes.png",
                    classes=classes,
                    image_shape=image_shape,
                )
            )
    summary = stats_summary(dict(activations or {}), dict(gradients or {}), dead)
    write_text(out / "stats.json", json.dumps(summary, indent=1))
    return written
