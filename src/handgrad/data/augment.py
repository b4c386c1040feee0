"""Data augmentation for image rows, written by hand and seeded.

MNIST-class digits are roughly centred; a network trained on a few thousand of them learns
their exact positions. Shifting each training image by a few pixels at random, a new shift per
image per epoch, shows it the same digit in many places, which helps a small training set
such as ``mnist-sample`` (benchmarks/RESULTS.md, "How the recipe was chosen").

For Fashion-MNIST and the ``resnet`` recipe, as the fast.ai course does: horizontal flips
(garments look the same in a mirror; digits do not) and random erasing, combined in
:func:`augment_batch`, the one function the training callback and ``handgrad data show
--augment`` call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from handgrad.data.dataset import FASHION


def random_shift(
    x: Tensor,
    max_shift: int,
    *,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Shift each image of ``x`` by its own random (dy, dx) in ``[-max_shift, max_shift]``.

    ``x`` holds flattened images, (N, C*H*W); the result has the same shape and dtype. Pixels
    shifted in from outside the image take the value ``fill`` (the background: 0 for raw
    pixels, ``-mean/std`` for normalised ones).

    How: pad every image by ``max_shift`` on each side; ``unfold`` then views the padded batch
    as every (H, W) window at every offset, (N, C, 2s+1, 2s+1, H, W), without copying; one
    advanced-indexing read picks each image's own window. The only copies are the padding and
    the output, which is why this beats gathering with per-pixel indices.
    """
    if max_shift <= 0:
        return x
    n = x.shape[0]
    c, h, w = image_shape
    s = max_shift
    padded = x.new_full((n, c, h + 2 * s, w + 2 * s), fill)  # (N, C, H+2s, W+2s)
    padded[:, :, s : s + h, s : s + w] = x.reshape(n, c, h, w)
    # offsets drawn on the CPU generator (reproducible whatever the device), then moved
    off = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(x.device)  # (2, N)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2s+1, 2s+1, H, W), a view
    out = windows[torch.arange(n, device=x.device), :, off[0], off[1]]  # (N, C, H, W)
    return out.reshape(n, c * h * w)


def random_flip(
    x: Tensor,
    *,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mirror each image of ``x`` (N, C*H*W) left to right with probability ``p``.

    For images whose classes keep their meaning in a mirror (a shirt, a shoe: Fashion-MNIST),
    never for digits (a mirrored 2 is no digit; see :func:`flips_allowed`). One draw per image
    on the CPU ``generator``, so the result is the same on every device.
    """
    n = x.shape[0]
    c, h, w = image_shape
    flip = (torch.rand(n, generator=generator) < p).to(x.device)  # (N,)
    images = x.reshape(n, c, h, w)
    out = torch.where(flip[:, None, None, None], images.flip(3), images)  # (N, C, H, W)
    return out.reshape(n, c * h * w)


def random_erase(
    x: Tensor,
    p: float,
    *,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    area: tuple[float, float] = (0.02, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random erasing (Zhong et al. 2017): with probability ``p``, replace one rectangle of
    each image of ``x`` (N, C*H*W) by standard-normal noise.

    The rectangle covers a fraction of the image drawn uniformly from ``area``, with a ratio
    ``height / width`` drawn log-uniformly from ``aspect``, at a uniform position where it
    fits. The noise is N(0, 1), the statistics of normalised pixels, so an erased patch does
    not change a batch's mean and variance, which batch norm would notice (the fast.ai course
    fills it the same way). Every number is drawn on the CPU ``generator`` (the same on every
    device); the masks are built from comparisons with index ranges, no per-image loop.
    """
    if p <= 0:
        return x
    n = x.shape[0]
    c, h, w = image_shape
    g = generator
    hit = torch.rand(n, generator=g) < p  # (N,)
    frac = torch.empty(n).uniform_(*area, generator=g)  # (N,)
    log_r = torch.empty(n).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=g)
    ratio = log_r.exp()  # (N,) height / width
    bh = (frac * ratio).sqrt().mul(h).round().clamp(1, h).long()  # (N,)
    bw = (frac / ratio).sqrt().mul(w).round().clamp(1, w).long()  # (N,)
    top = (torch.rand(n, generator=g) * (h - bh + 1)).long()  # (N,) in [0, h - bh]
    left = (torch.rand(n, generator=g) * (w - bw + 1)).long()  # (N,) in [0, w - bw]
    noise = torch.randn(n, c, h, w, generator=g)  # (N, C, H, W)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & hit[:, None, None])[:, None]  # (N,1,H,W)
    images = x.reshape(n, c, h, w)
    out = torch.where(mask.to(x.device), noise.to(x.device, x.dtype), images)
    return out.reshape(n, c * h * w)


def augment_batch(
    x: Tensor,
    *,
    shift: int = 0,
    flip: bool = False,
    erase: float = 0.0,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The training augmentation of one batch, in a fixed order: a random crop with padding
    ``shift`` (:func:`random_shift`: the same thing, a ``shift``-pixel pad then an H x W
    window), a horizontal flip with probability 1/2 when ``flip``, random erasing with
    probability ``erase``. Each step draws from ``generator`` only when it is on, so a run
    with shifts alone draws exactly what it drew before flips and erasing existed."""
    x = random_shift(x, shift, image_shape=image_shape, fill=fill, generator=generator)
    if flip:
        x = random_flip(x, image_shape=image_shape, generator=generator)
    return random_erase(x, erase, image_shape=image_shape, generator=generator)


def flips_allowed(classes: list[str]) -> bool:
    """Whether mirroring keeps these classes' meaning: Fashion-MNIST's garments yes; digits
    (and any other set) no, since a mirrored digit is another shape or none."""
    return list(classes) == list(FASHION)
