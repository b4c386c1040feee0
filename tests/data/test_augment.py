"""Random shifts: every output image is its input moved by at most max_shift, background filled."""

from __future__ import annotations

import torch

from handgrad.data.augment import random_shift


def shifted(img: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """``img`` (C, H, W) moved down by dy and right by dx, the uncovered border = fill."""
    h, w = img.shape[1:]
    out = torch.full_like(img, fill)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_each_image_is_a_shift_of_its_input() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2 * 5 * 6, generator=g)
    out = random_shift(x, 2, image_shape=(2, 5, 6), fill=-1.0, generator=g)
    assert out.shape == x.shape
    seen = set()
    for a, b in zip(x.reshape(64, 2, 5, 6), out.reshape(64, 2, 5, 6), strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(b, shifted(a, dy, dx, -1.0))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 15  # the 25 shifts are all drawn, not one for the whole batch


def test_seeded_and_zero_shift_is_identity() -> None:
    x = torch.rand(8, 16)
    a = random_shift(x, 1, image_shape=(1, 4, 4), generator=torch.Generator().manual_seed(3))
    b = random_shift(x, 1, image_shape=(1, 4, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert random_shift(x, 0, image_shape=(1, 4, 4)) is x
