"""Default training recipes: what ``handgrad train --model NAME`` does when told nothing else.

A recipe names the loss, the optimizer and its settings, the schedule, the batch size, the
number of epochs and the augmentation. Every field can be overridden on the command line.

The ``resnet`` recipe adds flips and random erasing to the shifts
(:mod:`handgrad.data.augment`); flips apply only where the data allows them (Fashion-MNIST).

The ``mlp`` recipe (AdamW, one-cycle, shifts of one pixel, label smoothing) was chosen by
measuring on ``mnist-sample`` and checking on Fashion-MNIST, where SGD's coupled weight decay
fell behind; the runs and their figures are in ``benchmarks/RESULTS.md`` ("How the recipe was
chosen"). Label smoothing stays because it makes ``handgrad predict``'s probabilities less
over-confident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from handgrad.errors import HandgradError
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.module import Module
from handgrad.train.metrics import accuracy

LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class Recipe:
    """Training defaults for one model (see the module docstring)."""

    loss: str = "cross_entropy"
    opt: str = "adamw"
    lr: float = 3e-3
    epochs: int = 20
    bs: int = 128
    schedule: str = "onecycle"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    shift: int = 1
    flip: bool = False  # horizontal flips, where the dataset allows them (never digits)
    erase: float = 0.0  # random-erasing probability per image
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None  # None: the model's own default


#: Per-model recipes; a model without one trains with :data:`DEFAULT` (AdamW, the forgiving
#: choice for an architecture nobody has tuned).
RECIPES: dict[str, Recipe] = {
    # The lesson's regression net: MSE on the digit's value (0..9), as taught.
    "lesson": Recipe(
        loss="mse", opt="adam", lr=1e-3, epochs=10, label_smoothing=0.0, shift=0, weight_decay=0.0
    ),
    "mlp": Recipe(opt="adamw", lr=3e-3, hidden=(512, 256)),
    # The settings measured in benchmarks/RESULTS.md ("Accuracy of the `cnn` recipe").
    "cnn": Recipe(opt="adamw", lr=1e-2, epochs=10, bs=64, shift=0),
    # The fast.ai course's recipe for its Fashion-MNIST ResNets (AdamW, one-cycle, crops,
    # flips, erasing), sized for this project's 2-core machine: about 13 million multiply-adds
    # per image, 40 epochs in about 26 minutes of training there (issue 18's budget is 30).
    # Epochs chosen on the validation split (seed 0: 94.26% at 20, 94.74% at 40); the test figures
    # are in benchmarks/RESULTS.md ("Residual networks"); benchmarks/resnet_accuracy.py runs
    # the same recipe against torch.nn + autograd.
    "resnet": Recipe(opt="adamw", lr=1e-2, epochs=40, bs=128, shift=2, flip=True, erase=0.25),
}
DEFAULT = Recipe()


def recipe_for(model: str) -> Recipe:
    return RECIPES.get(model, DEFAULT)


def digit_accuracy(preds: Tensor, labels: Tensor) -> Tensor:
    """Accuracy of a regression on the class index: the rounded prediction (clamped to the
    valid range 0..9) equals the label."""
    guess = preds.reshape(labels.shape).round().clamp(0, 9).to(labels.dtype)
    return (guess == labels).float().mean()


def make_loss(name: str, *, label_smoothing: float = 0.0) -> Module:
    if name == "cross_entropy":
        return CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "mse":
        return MSELoss()
    raise HandgradError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def metric_for(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Accuracy as each loss's predictions call for: argmax of logits, or rounded regression."""
    if loss == "mse":
        return digit_accuracy

    def class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
        value = accuracy(logits, labels)
        return value if isinstance(value, Tensor) else torch.tensor(value)

    return class_accuracy
