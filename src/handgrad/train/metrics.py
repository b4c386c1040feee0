"""Classification metrics: plain functions of predictions and integer labels (no state)."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.nn.layers.losses import LossInputError


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose highest-scoring class is the label: ``mean(argmax_c x_nc == y_n)``.

    Args:
        logits: (N, C) scores (logits or probabilities: only their order matters).
        labels: (N,) integer class indices.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise LossInputError(
            f"accuracy: needs logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise LossInputError("accuracy: no rows to score (N = 0)")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def confusion_matrix(preds: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """Counts ``M[true, predicted]`` as an (n_classes, n_classes) int64 tensor.

    Row ``i`` holds where the examples of class ``i`` went, so the diagonal counts the correct
    ones and ``M.sum() == N`` (the layout of ``sklearn.metrics.confusion_matrix``).

    Args:
        preds: (N,) predicted class indices (``logits.argmax(1)``).
        labels: (N,) true class indices.
        n_classes: number of classes; every index must be in [0, n_classes).
    """
    if preds.dim() != 1 or preds.shape != labels.shape:
        raise LossInputError(
            f"confusion_matrix: needs preds (N,) and labels (N,), got {tuple(preds.shape)} and "
            f"{tuple(labels.shape)}; pass logits.argmax(1) as preds"
        )
    if n_classes < 1:
        raise LossInputError(f"confusion_matrix: n_classes must be >= 1, got {n_classes}")
    for name, t in (("preds", preds), ("labels", labels)):
        if t.is_floating_point():
            raise LossInputError(f"confusion_matrix: {name} must be integer class indices")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
            raise LossInputError(
                f"confusion_matrix: {name} must be in [0, {n_classes}), got values from "
                f"{int(t.min())} to {int(t.max())}"
            )
    # Each (true, predicted) pair becomes one bin index: true * C + predicted.
    flat = labels.long() * n_classes + preds.long()  # (N,)
    counts = torch.bincount(flat, minlength=n_classes * n_classes)  # (C * C,)
    return counts.reshape(n_classes, n_classes)
