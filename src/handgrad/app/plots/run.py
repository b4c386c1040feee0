"""Every plot of a training run in one folder: what ``handgrad train --plots DIR`` writes.

=========================  ===========================================================
``history.png``            loss, accuracy and learning rate over the run
``lr_finder.png``          the learning-rate range test, on a fresh model of the run's config
``confusion_matrix.png``   the final model on the validation set
``activation_stats.png``   per-layer mean / std / % near zero of the outputs over training
``gradient_stats.png``     the same for dL/d(output), from the hand-written backward pass
``activation_histograms.png``, ``gradient_histograms.png``  colorful-dimension histograms
``dead_units.png``         ReLU units never active on the validation set
``confident_mistakes.png`` the validation images most confidently misclassified
``stats.json``             each layer's final statistics, for ``handgrad report``
=========================  ===========================================================

The statistics are recorded during training by :class:`~handgrad.train.stats.ActivationStats` and
:class:`~handgrad.train.stats.GradientStats` (:func:`stats_callbacks` makes them); they only read
tensors, so a run with ``--plots`` trains exactly as one without.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from handgrad.app.plots.stats import save_stats_plots
from handgrad.app.plots.training import plot_confusion, plot_history, plot_lr_find
from handgrad.app.run import Run, build_run
from handgrad.train.callbacks import lr_find
from handgrad.train.inference import predicted_classes
from handgrad.train.stats import ActivationStats, GradientStats, predict_logits

#: About this many records per layer over a run: enough for smooth curves, little overhead.
RECORDS = 200
LR_FINDER_STEPS = 100


def stats_callbacks(total_steps: int) -> tuple[ActivationStats, GradientStats]:
    """The two statistics callbacks, recording about :data:`RECORDS` batches of the run."""
    every = max(1, total_steps // RECORDS)
    return ActivationStats(every=every), GradientStats(every=every)


def plot_run_history(run: Run, path: str | os.PathLike[str]) -> Path:
    """The run's ``history.png``, titled with its model, data and recipe."""
    c = run.config
    title = f"{c.model} on {run.dataset.name}: {c.opt} lr {c.lr:g} {c.schedule}, bs {c.bs}"
    if c.label_smoothing:
        title += (
            f"\n(training loss with label smoothing {c.label_smoothing:g}; validation loss "
            "without it)"
        )
    return plot_history(run.learn.recorder, path, title=title)


def write_run_plots(
    run: Run,
    out_dir: str | os.PathLike[str],
    stats: tuple[ActivationStats, GradientStats] | None = None,
    *,
    lr_finder: bool = True,
) -> list[Path]:
    """Write every plot of the finished ``run`` into ``out_dir`` (see the module doc) and
    return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learn, ds, config = run.learn, run.dataset, run.config
    name = f"{config.model} on {ds.name}"
    written = [plot_run_history(run, out / "history.png")]

    if lr_finder:
        # A fresh model of the same config, so the trained one is untouched; the global RNG
        # is restored after, so nothing that follows depends on whether this ran.
        with torch.random.fork_rng(devices=[]):
            fresh = build_run(dataclasses.replace(config, lr=1e-6), dataset=ds, for_training=False)
            finder = lr_find(fresh.learn, num_steps=LR_FINDER_STEPS)
        written.append(
            plot_lr_find(
                finder,
                out / "lr_finder.png",
                title=f"learning-rate finder: {name}, {config.opt}, bs {config.bs}",
            )
        )

    data = run.info["data"]
    x_valid = ((ds.valid.x - data["mean"]) / data["std"]).to(learn.device)  # as the model saw it
    y_valid = ds.valid.y.to(learn.device)
    outputs = predict_logits(learn.model, x_valid)
    classes = list(ds.classes)
    pred = predicted_classes(outputs, run.loss_name, len(classes))
    k = len(classes)
    counts = torch.bincount(y_valid * k + pred, minlength=k * k).reshape(k, k)  # (true, pred)
    written.append(
        plot_confusion(
            counts.cpu().numpy(),
            classes,
            out / "confusion_matrix.png",
            title=f"confusion matrix: {name}, validation",
        )
    )

    acts, grads = stats if stats is not None else (None, None)
    written += save_stats_plots(
        out,
        activations=acts.stats if acts is not None and acts.hooks is not None else None,
        gradients=grads.stats if grads is not None and grads.hooks is not None else None,
        model=learn.model,
        valid=(x_valid, y_valid),
        images=ds.valid.x,
        classes=classes,
        image_shape=tuple(ds.image_shape),
    )
    return written
