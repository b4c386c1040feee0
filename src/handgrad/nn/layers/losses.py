"""Losses: modules whose output is a scalar and whose second argument is the target."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.errors import HandgradError
from handgrad.nn import functional as F
from handgrad.nn.module import Module


class LossInputError(HandgradError, ValueError):
    """Predictions or targets that a loss cannot take (wrong shape, dtype or label range).

    A :class:`~handgrad.errors.HandgradError` (the CLI prints it as one line) and a
    ``ValueError`` (what a library caller expects for a bad argument).
    """


class MSELoss(Module):
    """Mean squared error ``L = mean((input - target)^2)``; ``dL/dinput = 2 (input - target) / M``.

    ``input`` of shape (N, 1) against ``target`` of shape (N,) is accepted (the lesson's
    regression head); otherwise both must have the same number of elements.
    """

    no_grad_args = (1,)

    def forward(self, inp: Tensor, target: Tensor) -> Tensor:
        loss, diff = F.mse_forward(inp, target)
        self.save_for_backward(diff)
        return loss

    def bwd(self, out: Tensor, inp: Tensor, target: Tensor) -> None:
        (diff,) = self.saved
        inp.g = F.mse_backward(out.g, diff, inp.shape)


class CrossEntropyLoss(Module):
    """Mean cross-entropy of logits against integer class labels, with optional label smoothing.

    ``L = -(1/N) sum_n sum_c t_nc log softmax(x_n)_c``, ``t = (1 - eps) onehot(y) + eps / C``;
    ``dL/dx = (softmax(x) - t) / N`` (see :func:`handgrad.nn.functional.cross_entropy_forward`).
    Matches ``torch.nn.functional.cross_entropy(x, y, label_smoothing=eps)``.

    Args:
        label_smoothing: ``eps`` in [0, 1]; 0 (default) is the plain negative log-likelihood.

    Shape:
        - logits: (N, C) floating point, N >= 1.
        - labels: (N,) int64 with values in [0, C).
        - output: scalar.

    Example:
        >>> loss_fn = CrossEntropyLoss()
        >>> loss = loss_fn(model(xb), yb)
        >>> model.backward(loss_fn.backward())
    """

    no_grad_args = (1,)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not (isinstance(label_smoothing, int | float) and 0.0 <= label_smoothing <= 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check_classification(logits, labels, "CrossEntropyLoss")
        loss, cache = F.cross_entropy_forward(logits, labels, self.label_smoothing)
        self.save_for_backward(cache)
        return loss

    def bwd(self, out: Tensor, logits: Tensor, labels: Tensor) -> None:
        (cache,) = self.saved
        logits.g = F.cross_entropy_backward(out.g, cache)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""


def _check_classification(logits: Tensor, labels: Tensor, who: str) -> None:
    """Raise :class:`LossInputError` unless ``logits`` is (N, C) float and ``labels`` is (N,)
    int64 in [0, C)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else "no tensor"
        raise LossInputError(
            f"{who}: logits must be a floating-point (N, C) tensor, got {got}; "
            "flatten extra dimensions or pass the model's raw class scores"
        )
    n, c = logits.shape
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise LossInputError(
            f"{who}: labels must be an int64 tensor of class indices, got {got}; "
            "convert with labels.long()"
        )
    if labels.shape != (n,):
        raise LossInputError(
            f"{who}: labels have shape {tuple(labels.shape)} but logits are {(n, c)}; "
            f"give one class index per row, shape ({n},)"
        )
    if n == 0 or c == 0:
        raise LossInputError(f"{who}: logits {(n, c)} are empty; need N >= 1 rows, C >= 1 classes")
    if labels.device.type != "cpu":
        # Reading the range back would make an accelerator wait for the host at every step;
        # the data layer validates labels once at load time, and an out-of-range index still
        # fails in the gather (as a device-side error).
        return
    lo, hi = torch.aminmax(labels)  # one pass; on the CPU no synchronisation is involved
    lo_v, hi_v = int(lo), int(hi)
    if lo_v < 0 or hi_v >= c:
        raise LossInputError(
            f"{who}: labels must be in [0, {c}) for {c} classes, got values from {lo_v} to "
            f"{hi_v}; check the dataset's labels or the model's number of outputs"
        )
