"""Using a trained checkpoint: rebuild the model, evaluate it on a dataset, read images.

The checkpoint's sidecar says everything needed: the model's name and arguments, the loss, the
image shape, the class names and the normalisation (mean and std of the training pixels).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handgrad.data.augment import flips_allowed
from handgrad.errors import HandgradError
from handgrad.nn.models import MODELS, build_model
from handgrad.nn.module import Module
from handgrad.train.checkpoint import Checkpoint, load_checkpoint, load_weights
from handgrad.train.recipes import make_loss, metric_for

DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, in eval mode."""

    model: Module
    ckpt: Checkpoint

    @property
    def data(self) -> dict[str, Any]:
        return self.ckpt.info["data"]

    @property
    def loss_name(self) -> str:
        return self.ckpt.info.get("loss", "cross_entropy")

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.data["mean"]) / self.data["std"]

    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Raw outputs for normalised rows ``x`` (N, n_features), batch by batch."""
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                outs.append(self.model(x[i : i + batch_size]))
        return torch.cat(outs) if outs else torch.empty(0)


def load_trained(path: str | os.PathLike[str]) -> Trained:
    ckpt = load_checkpoint(path)
    info = ckpt.info
    try:
        name, kwargs = info["model"]["name"], dict(info["model"]["kwargs"])
        data = info["data"]
        n_features, n_classes = int(data["n_features"]), len(data["classes"])
        float(data["mean"]), float(data["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HandgradError(
            f"{ckpt.path}: the sidecar lacks the model or data description ({exc}); it was not "
            "written by handgrad train"
        ) from exc
    if name not in MODELS:
        raise HandgradError(
            f"{ckpt.path}: model {name!r} is not known to this handgrad (have "
            f"{', '.join(MODELS)}); upgrade handgrad"
        )
    try:
        model = build_model(name, in_features=n_features, n_classes=n_classes, **kwargs)
    except (TypeError, ValueError) as exc:  # an edited or foreign sidecar
        raise HandgradError(
            f"{ckpt.path.with_suffix('.json')}: cannot build model {name!r} from its kwargs "
            f"{kwargs} ({exc}); the sidecar was edited or not written by handgrad train"
        ) from None
    load_weights(model, ckpt)
    model.eval()
    return Trained(model, ckpt)


def check_input_size(trained: Trained, n_features: int, image_shape: Any, where: str) -> None:
    want = int(trained.data["n_features"])
    if n_features != want:
        shape = "x".join(map(str, trained.data["image_shape"]))
        got = "x".join(map(str, image_shape))
        raise HandgradError(
            f"{where}: images of {got} ({n_features} values) but the model takes {shape} "
            f"({want} values); use data of the size it was trained on"
        )


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: np.ndarray  # (classes, classes): rows true class, columns prediction
    n: int
    tta_accuracy: float | None = None  # with test-time augmentation (evaluate(..., tta=True))


def predicted_classes(outputs: Tensor, loss_name: str, n_classes: int) -> Tensor:
    if loss_name == "mse":  # a regression on the class index
        return outputs.reshape(-1).round().clamp(0, n_classes - 1).long()
    return outputs.argmax(1)


def flip_rows(x: Tensor, image_shape: Sequence[int]) -> Tensor:
    """Each image of ``x`` (N, C*H*W) mirrored left to right."""
    c, h, w = (int(s) for s in image_shape)
    return x.reshape(len(x), c, h, w).flip(3).reshape(len(x), c * h * w)


def tta_probabilities(trained: Trained, x: Tensor) -> Tensor:
    """Test-time augmentation: the softmax probabilities of each normalised row of ``x``
    (N, C*H*W), averaged over the image and its mirror image, ``(p(x) + p(flip(x))) / 2``
    (N, classes). Only for classes that keep their meaning in a mirror (see
    :func:`handgrad.data.augment.flips_allowed`); the caller checks."""
    plain = torch.softmax(trained.predict(x).double(), dim=1)  # (N, classes)
    mirrored = trained.predict(flip_rows(x, trained.data["image_shape"]))
    return (plain + torch.softmax(mirrored.double(), dim=1)) / 2  # (N, classes)


def check_tta(trained: Trained) -> None:
    """Raise :class:`HandgradError` when test-time flips make no sense for this model."""
    if trained.loss_name == "mse":
        raise HandgradError(
            "--tta: this model regresses the class index; TTA averages class "
            "probabilities, which it has none of; leave --tta out"
        )
    if not flips_allowed(trained.data["classes"]):
        raise HandgradError(
            "--tta: flips images left to right, which changes digits (only "
            "Fashion-MNIST's classes keep their meaning); leave --tta out"
        )


def evaluate(trained: Trained, x: Tensor, y: Tensor, *, tta: bool = False) -> Evaluation:
    """Loss (without label smoothing), accuracy and confusion matrix on raw pixels ``x``; with
    ``tta``, also the accuracy of :func:`tta_probabilities` (the rest stays the plain model's)."""
    n_classes = len(trained.data["classes"])
    if tta:
        check_tta(trained)
    outputs = trained.predict(trained.normalize(x))
    loss_fn = make_loss(trained.loss_name).eval()
    with torch.no_grad():
        loss = float(loss_fn(outputs, y))
        acc = float(metric_for(trained.loss_name)(outputs, y))
    pred = predicted_classes(outputs, trained.loss_name, n_classes)
    counts = torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    tta_acc = None
    if tta:
        probs = tta_probabilities(trained, trained.normalize(x))
        tta_acc = float((probs.argmax(1) == y).double().mean()) if len(y) else math.nan
    return Evaluation(loss, acc, counts.reshape(n_classes, n_classes).numpy(), len(y), tta_acc)


# ------------------------------------------------------------------------------------ images
#: The most pixels an image to classify may have (a 50-megapixel photo): a PNG's header can
#: claim 20000x20000 in a few hundred bytes, and decoding it would take gigabytes.
MAX_IMAGE_PIXELS = 50_000_000


def prepare_image(path: str | os.PathLike[str], trained: Trained) -> np.ndarray:
    """A PNG/JPEG (any size up to :data:`MAX_IMAGE_PIXELS`) as the (H, W) pixels in [0, 1] the
    model takes, prepared like the training images: grayscale, light ink on a dark background
    (inverted when the picture is dark on light), and for digit datasets centred as MNIST's
    were (the ink's bounding box scaled to 20x20 inside 28x28, centre of mass in the middle);
    other datasets are resized whole."""
    path = Path(path)
    channels, height, width = trained.data["image_shape"]
    if channels != 1:
        raise HandgradError(f"{path}: only grayscale models can read images (model: {channels} ch)")
    gray = _read_gray(path)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise HandgradError(f"{path}: empty image")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # dark ink on light paper: MNIST is light on dark
        gray = 1.0 - gray
    if trained.data["classes"] == DIGIT_CLASSES:
        return _mnist_style(gray, height, width, path)
    return _resize(gray, width, height)


def _read_gray(path: Path) -> np.ndarray:
    """The image's grayscale pixels in [0, 1]; its size is checked from the header, before the
    pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    too_big = f"{path}: more than {MAX_IMAGE_PIXELS:,} pixels"
    fix = "scale the picture down (a digit needs a few hundred pixels a side at most)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise HandgradError(f"{too_big} ({w}x{h}); {fix}")
                img = ImageOps.exif_transpose(img)
                if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                    back = Image.new("RGBA", img.size, "white")  # transparent = paper
                    img = Image.alpha_composite(back, img.convert("RGBA"))
                return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except Image.DecompressionBombError:
        raise HandgradError(f"{too_big}; {fix}") from None
    except FileNotFoundError as exc:
        raise HandgradError(f"{path}: no such file; give the path of a PNG or JPEG") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HandgradError(
            f"{path}: cannot read it as an image ({type(exc).__name__}); give a PNG or JPEG"
        ) from exc


def _resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray((gray * 255).round().astype(np.uint8))
    return np.asarray(img.resize((width, height), Image.Resampling.LANCZOS), np.float32) / 255.0


def _mnist_style(gray: np.ndarray, height: int, width: int, path: Path) -> np.ndarray:
    ink = gray > 0.25 * gray.max() if gray.max() > 0.05 else np.zeros_like(gray, dtype=bool)
    if not ink.any():
        raise HandgradError(f"{path}: no digit found (the image is blank)")
    rows, cols = np.nonzero(ink)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(20 * min(height, width) / 28))  # MNIST: a 20x20 box in 28x28
    scale = box / max(crop.shape)
    w = max(1, round(crop.shape[1] * scale))
    h = max(1, round(crop.shape[0] * scale))
    small = _resize(crop, w, h)
    canvas = np.zeros((height, width), np.float32)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = small
    total = canvas.sum()
    if total > 0:  # move the centre of mass to the centre, as MNIST's preparation did
        yy, xx = np.mgrid[0:height, 0:width]
        dy = round((height - 1) / 2 - (yy * canvas).sum() / total)
        dx = round((width - 1) / 2 - (xx * canvas).sum() / total)
        canvas = _shift(canvas, dy, dx)
    return np.clip(canvas, 0.0, 1.0)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def top_k(trained: Trained, rows: Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each row, the ``k`` most probable classes with their softmax probabilities; for a
    regression model, the rounded value with the raw output in place of a probability."""
    classes = trained.data["classes"]
    outputs = trained.predict(rows)
    if trained.loss_name == "mse":
        pred = predicted_classes(outputs, "mse", len(classes))
        return [
            [(classes[int(p)], float(o))] for p, o in zip(pred, outputs.reshape(-1), strict=True)
        ]
    probs = torch.softmax(outputs.double(), dim=1)
    values, idx = probs.topk(min(k, len(classes)), dim=1)
    return [
        [(classes[int(i)], float(v)) for v, i in zip(vs, ids, strict=True)]
        for vs, ids in zip(values, idx, strict=True)
    ]
