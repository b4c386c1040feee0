"""Data augmentation for image rows, written by hand and seeded.

MNIST-class digits are roughly centred; a network trained on a few thousand of them learns
their exact positions. Shifting each training image by a few pixels at random, a new shift per
image per epoch, shows it the same digit in many places, which helps a small training set
such as ``mnist-sample`` (benchmarks/RESULTS.md, "How the recipe was chosen").
"""

from __future__ import annotations

import torch
from torch import Tensor


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
