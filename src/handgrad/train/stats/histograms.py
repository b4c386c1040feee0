"""One layer's statistics over the recorded batches, and how a batch is summarised: mean, std,
the fraction near zero, and a histogram over fixed bins (linear for activations, over
``log10 |g|`` for gradients), with ranges chosen from the first batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

BINS = 40
ACT_ZERO = 1e-3
GRAD_ZERO = 1e-8


@dataclass
class LayerStats:
    """The statistics of one layer's activations (or gradients) over the recorded batches.

    Attributes:
        name: the layer's dotted name in the model (``"layers.1"``).
        kind: its class name (``"ReLU"``).
        what: ``"activation"`` or ``"gradient"``.
        steps: (T,) int64, the training batch index of each record (0-based).
        mean, std, near_zero: (T,) float64.
        hist: (T, bins) float64 counts of elements per bin.
        edges: (bins + 1,) the bin edges: values, or ``log10 |v|`` when ``log_scale``.
        log_scale: the histogram bins ``log10 |v|`` (gradients) rather than ``v``.
        threshold: the ``near_zero`` threshold used.
        epoch_starts: the batch index at which each epoch after the first began (marked by
            the Learner callbacks; empty without them).
    """

    name: str
    kind: str
    what: str
    steps: Tensor
    mean: Tensor
    std: Tensor
    near_zero: Tensor
    hist: Tensor
    edges: Tensor
    log_scale: bool
    threshold: float
    epoch_starts: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """``"layers.1 (ReLU)"``: how plots name the layer."""
        return f"{self.name} ({self.kind})" if self.name else self.kind


@dataclass
class _Series:
    """What one hook accumulates: rows of (mean, std, near_zero) and histograms, on device."""

    kind: str
    steps: list[int] = field(default_factory=list)
    rows: list[Tensor] = field(default_factory=list)
    hists: list[Tensor] = field(default_factory=list)
    edges: Tensor | None = None


def nice_ceil(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 (times a power of ten) that is at least ``v`` (> 0)."""
    if not v > 0 or not math.isfinite(v):
        return 1.0
    base = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * base >= v * (1 - 1e-12):
            return m * base
    return 10.0 * base  # pragma: no cover (the loop always returns)


def activation_edges(x: Tensor, bins: int = BINS) -> Tensor:
    """Bin edges for a layer's activations, from its first recorded output ``x`` (see the
    module docstring): ``[0, R]`` or ``[-R, R]``, ``R = nice_ceil(4 max |x|)``: activations
    usually grow while a network trains, and this margin keeps them inside the range."""
    x = x.detach().float()
    r = nice_ceil(4.0 * float(x.abs().max())) if x.numel() else 1.0
    lo = 0.0 if x.numel() == 0 or float(x.min()) >= 0 else -r
    return torch.linspace(lo, r, bins + 1, dtype=torch.float64)


def gradient_edges(g: Tensor, bins: int = BINS) -> Tensor:
    """Bin edges over ``log10 |g|`` from a layer's first recorded gradient: from 4 decades
    below the 1st percentile of the non-zero magnitudes to 2 decades above the largest."""
    mag = g.detach().abs().flatten().float()
    mag = mag[mag > 0]
    if mag.numel() == 0:
        lo, hi = -10.0, 0.0
    else:
        k = max(1, math.ceil(0.01 * mag.numel()))
        lo = math.floor(math.log10(float(mag.kthvalue(k).values))) - 4.0
        hi = math.ceil(math.log10(float(mag.max()))) + 2.0
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)


def summarize(
    x: Tensor, edges: Tensor, *, threshold: float, log_scale: bool
) -> tuple[Tensor, Tensor]:
    """``(tensor([mean, std, near_zero]), hist)`` of all elements of ``x``.

    ``hist[i]`` counts the elements in ``[edges[i], edges[i+1])`` (the last bin is closed);
    values below or above the range count in the first or last bin; NaNs are not counted.
    With ``log_scale`` the binned value is ``log10 |x|`` and exact zeros are not counted.
    The edges must be evenly spaced (as :func:`activation_edges` and :func:`gradient_edges`
    make them).
    """
    flat = x.detach().flatten()  # (M,)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    n = max(flat.numel(), 1)
    # Two passes (mean, then the mean square of the deviations): as exact as torch.std and,
    # on the CPU, several times faster for the small tensors a hook sees every batch.
    mean = flat.sum() / n
    dev = flat - mean  # (M,)
    std = (dev.mul_(dev).sum() / n).sqrt()
    mag = flat.abs()
    near = (mag < threshold).sum().to(mean.dtype) / n
    bins = edges.numel() - 1
    lo, hi = float(edges[0]), float(edges[-1])
    v = mag.log10().masked_fill_(mag == 0, math.nan) if log_scale else flat
    # Bin index as torch.histc computes it, clamped so that the outermost bins also hold what
    # lies beyond the range; NaN (and, in log scale, zero) goes to an extra bin that is cut
    # off. bincount is several times faster than histc on the CPU.
    scale = bins / (hi - lo)
    idx = v.mul(scale).sub_(lo * scale).floor_().clamp_(0, bins - 1).nan_to_num_(nan=bins)
    hist = torch.bincount(idx.long(), minlength=bins + 1)[:bins].to(mean.dtype)  # (bins,)
    return torch.stack([mean, std, near]), hist
