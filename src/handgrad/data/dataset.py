"""``Split`` and ``Dataset``: what every loader returns, whatever the file it came from.

Every source (the lesson's pickle, IDX files, ``.npz``, the embedded sample, a download) ends in
:func:`to_split`, which turns raw numpy arrays into the one layout the rest of handgrad uses:
pixels as float32 rows in [0, 1], labels as int64 in [0, n_classes). It is also where bad data
is stopped: wrong shapes, NaNs, pixels outside their range and labels outside the classes each
raise a :class:`~handgrad.errors.HandgradError` naming the file and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from handgrad.errors import HandgradError

N_CLASSES = 10
DIGITS = [str(d) for d in range(N_CLASSES)]
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: Validation rows carved off the end of a training set that comes without one: 1/6, which is
#: the lesson's split of MNIST's 60,000 training digits into 50,000 train + 10,000 valid.
VALID_FRACTION = 1 / 6


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset: ``x`` float32 (N, D) pixels in [0, 1], ``y`` int64 (N,) labels."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"Split needs x (N, D) and y (N,), got {tuple(self.x.shape)} and "
                f"{tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(
                f"Split needs float32 x and int64 y, got {self.x.dtype}, {self.y.dtype}"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(eq=False)
class Dataset:
    """A classification dataset of flattened images, with fixed train/valid(/test) splits.

    Attributes:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"mnist-sample"`` or the file's name.
        train, valid: always present; ``test`` may be ``None`` (the embedded sample has none).
        classes: one display name per label value.
        image_shape: (channels, height, width) of one row of ``x`` once reshaped.
        source: where the data was found (a path, or the package that ships it).
        split_note: how train/valid/test were formed, for ``handgrad data info``.
    """

    name: str
    train: Split
    valid: Split
    test: Split | None
    classes: list[str]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    source: str = ""
    split_note: str = field(default="")

    def splits(self) -> dict[str, Split]:
        """The splits that exist, by name, in the order train, valid, test."""
        parts = {"train": self.train, "valid": self.valid, "test": self.test}
        return {k: v for k, v in parts.items() if v is not None}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]


def pixel_stats(x: Tensor, chunk_rows: int = 8192) -> tuple[float, float]:
    """Mean and standard deviation of every value of ``x``, accumulated in float64 chunk by
    chunk (exact enough for any size, without a float64 copy of the whole split)."""
    n, total, squares = x.numel(), 0.0, 0.0
    if n == 0:
        raise ValueError("pixel_stats of an empty tensor")
    mean_guess = float(x[:chunk_rows].double().mean())  # shift: avoids cancellation in E[x^2]
    for chunk in x.split(chunk_rows):
        c = chunk.double() - mean_guess  # (rows, D)
        total += float(c.sum())
        squares += float((c * c).sum())
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)  # unbiased, as torch.std
    return mean + mean_guess, math.sqrt(var)


def to_split(
    x: np.ndarray,
    y: np.ndarray,
    where: str,
    n_classes: int = N_CLASSES,
    labels_where: str | None = None,
) -> tuple[Split, tuple[int, int, int]]:
    """Check raw arrays and convert them to a :class:`Split` (and the image shape they had).

    ``x`` may be uint8 (0..255, scaled by 1/255) or floating point already in [0, 1]; shaped
    (N, H, W), (N, 1, H, W) or (N, H*W) with a square image. ``y`` holds integers in
    [0, n_classes). ``where`` names the file (and part of it) in error messages, and
    ``labels_where`` the labels' file when it is another one (IDX).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise HandgradError(f"{where}: holds no images; the file is empty or was cut short")
    image_shape = _image_shape(x.shape, where)
    if y.shape != (len(x),):
        raise HandgradError(
            f"{where}: {len(x)} images but labels of shape {y.shape}; each image needs exactly "
            "one label (a 1-D array of the same length)"
        )
    if x.dtype == np.uint8:
        # numpy casts (a fresh, writable array: IDX bytes are a read-only buffer), torch scales.
        pixels = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32)).div_(255.0)  # (N, D)
    elif np.issubdtype(x.dtype, np.floating):
        pixels = torch.from_numpy(_writable(x.reshape(len(x), -1).astype(np.float32, copy=False)))
        if not bool(torch.isfinite(pixels).all()):
            raise HandgradError(f"{where}: the pixels contain NaN or infinity; the file is corrupt")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0.0 or hi > 1.0:
            raise HandgradError(
                f"{where}: float pixels range over [{lo:g}, {hi:g}], expected [0, 1]; divide "
                "them by their maximum (255 for MNIST) or store them as uint8"
            )
    else:
        raise HandgradError(
            f"{where}: pixels are stored as {x.dtype}; expected uint8 (0..255) or floats in [0, 1]"
        )
    labels_where = labels_where or where
    if not np.issubdtype(y.dtype, np.integer):
        raise HandgradError(
            f"{labels_where}: labels are stored as {y.dtype}; expected integers 0..{n_classes - 1}"
        )
    lo, hi = int(y.min()), int(y.max())  # before the cast: uint64 above 2**63 stays positive
    if lo < 0 or hi >= n_classes:
        raise HandgradError(
            f"{labels_where}: labels range over [{lo}, {hi}], outside the {n_classes} classes "
            f"0..{n_classes - 1}; the labels file is corrupt or belongs to another dataset"
        )
    labels = torch.from_numpy(np.array(y, dtype=np.int64))  # (N,), a copy: small
    if not pixels.is_contiguous():
        pixels = pixels.contiguous()
    return Split(pixels, labels.contiguous()), image_shape


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, copied if read-only (torch tensors may not share read-only memory)."""
    return a if a.flags.writeable else a.copy()


def _image_shape(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] == 1:
        return (1, shape[2], shape[3])
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        if side * side == shape[1] and side > 0:
            return (1, side, side)
    raise HandgradError(
        f"{where}: images of shape {shape}; expected (N, H, W), (N, 1, H, W) or (N, H*W) "
        "with square images"
    )


def carve_valid(split: Split, where: str, fraction: float = VALID_FRACTION) -> tuple[Split, Split]:
    """Split off the last ``fraction`` of the rows as validation (views, no copy).

    The tail is taken, not a random subset, so that MNIST's 60,000 IDX training digits give
    exactly the lesson's ``mnist.pkl.gz`` train (first 50,000) and valid (last 10,000).
    """
    n_valid = int(len(split) * fraction)
    if n_valid < 1 or n_valid >= len(split):
        raise HandgradError(
            f"{where}: {len(split)} training rows are too few to carve a validation split from "
            f"({fraction:.0%}); provide a separate validation set"
        )
    cut = len(split) - n_valid
    return Split(split.x[:cut], split.y[:cut]), Split(split.x[cut:], split.y[cut:])


def make_dataset(
    name: str,
    parts: dict[str, tuple[Split, tuple[int, int, int]]],
    *,
    classes: list[str],
    source: str,
    split_note: str,
) -> Dataset:
    """Assemble a :class:`Dataset` from checked parts, refusing parts of different image sizes."""
    shapes = {k: s for k, (_, s) in parts.items()}
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{k} {s[1]}x{s[2]}" for k, s in shapes.items())
        raise HandgradError(
            f"{source}: the splits hold images of different sizes ({found}); all files must "
            "come from the same dataset"
        )
    test = parts.get("test")
    return Dataset(
        name=name,
        train=parts["train"][0],
        valid=parts["valid"][0],
        test=None if test is None else test[0],
        classes=classes,
        image_shape=shapes["train"],
        source=source,
        split_note=split_note,
    )


def class_names_for(path_text: str) -> list[str]:
    """Fashion-MNIST's names when the path says so (``fashion`` in it), else the digits."""
    return list(FASHION) if "fashion" in path_text.lower() else list(DIGITS)
