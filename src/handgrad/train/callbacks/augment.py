"""``Augment``: random crops (shifts), flips and erasing of the training images, reproducible
across a resume."""

from __future__ import annotations

import torch

from handgrad.data.augment import augment_batch
from handgrad.train.learner import Callback, Learner


class Augment(Callback):
    """Augment each training batch on its device (validation batches are untouched): random
    shifts of up to ``max_shift`` pixels (a random crop with that padding), a horizontal flip
    of half the images when ``flip`` (Fashion-MNIST, never digits) and random erasing with
    probability ``erase`` (:func:`handgrad.data.augment.augment_batch`).

    The random numbers of epoch ``e`` come from a CPU generator seeded with ``(seed, e)``, so a
    resumed run draws exactly what the straight run drew, and a shift-only run draws what it
    drew before flips and erasing existed.
    """

    order = -5

    def __init__(
        self,
        max_shift: int = 2,
        *,
        flip: bool = False,
        erase: float = 0.0,
        seed: int = 0,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        fill: float = 0.0,
    ) -> None:
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"Augment: erase is a probability in [0, 1], got {erase}")
        self.max_shift, self.flip, self.erase = max_shift, flip, erase
        self.seed, self.image_shape, self.fill = seed, image_shape, fill

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + learn.epoch + 1)

    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            learn.xb = augment_batch(
                learn.xb,
                shift=self.max_shift,
                flip=self.flip,
                erase=self.erase,
                image_shape=self.image_shape,
                fill=self.fill,
                generator=self._gen,
            )
