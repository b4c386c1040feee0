"""``Augment``: random shifts of the training images, reproducible across a resume."""

from __future__ import annotations

import torch

from handgrad.data.augment import random_shift
from handgrad.train.learner import Callback, Learner


class Augment(Callback):
    """Random shifts of up to ``max_shift`` pixels for each training image (validation
    batches are untouched). The random numbers of epoch ``e`` come from a generator seeded with
    ``(seed, e)``, so a resumed run draws exactly what the straight run drew.
    """

    order = -5

    def __init__(
        self,
        max_shift: int = 2,
        *,
        seed: int = 0,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        fill: float = 0.0,
    ) -> None:
        self.max_shift, self.seed, self.image_shape, self.fill = max_shift, seed, image_shape, fill

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + learn.epoch + 1)

    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            learn.xb = random_shift(
                learn.xb,
                self.max_shift,
                image_shape=self.image_shape,
                fill=self.fill,
                generator=self._gen,
            )
