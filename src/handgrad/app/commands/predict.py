"""``handgrad predict CKPT IMAGE...``: classify PNG/JPEG images with a trained checkpoint.

    handgrad predict runs/<run>/best.safetensors my_digit.png photo.jpg
    handgrad predict runs/<run>/best.safetensors *.png --show seen/   # and what the model saw

Each image (any size) is turned into what the model was trained on: grayscale, light ink on a
dark background (inverted if needed), digits centred in 28x28 as MNIST's were, and normalised
with the training data's mean and std. Prints the top classes with their probabilities, one
line per image; an image that cannot be read gets its error line instead, the others are still
classified, and the exit status is then 2. ``--show DIR`` writes, for each image, the input the
model saw (28x28 for MNIST, before normalisation) as ``DIR/<name>.png``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handgrad._io import write_bytes
from handgrad.app.outputs import check_folder
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError
from handgrad.train.inference import Trained, load_trained, prepare_image, top_k


def add(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images (PNG/JPEG) with a checkpoint: top-3 classes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors written by handgrad train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--top", type=int, default=3, help="how many classes to show (default 3)")
    p.add_argument(
        "--show",
        metavar="DIR",
        default=None,
        help="write each image as the model saw it (e.g. 28x28) to DIR/<name>.png (default: none)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    trained = load_trained(args.checkpoint)
    show = _show_folder(args.show) if args.show else None
    failed, written = 0, set()
    for path in args.images:
        try:
            pixels = prepare_image(path, trained)  # (H, W) in [0, 1]
            if show is not None:
                written.add(_save_seen(pixels, show, Path(path), written))
        except HandgradError as exc:
            print(f"handgrad predict: error: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        row = trained.normalize(torch.from_numpy(pixels.reshape(1, -1).copy()))  # (1, H*W)
        text = _line(path, trained, row, max(1, args.top))
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if failed:
        print(
            f"handgrad predict: {failed} of {len(args.images)} images could not be read",
            file=sys.stderr,
        )
    return 2 if failed else 0


def _line(path: str, trained: Trained, row: torch.Tensor, top: int) -> str:
    (best,) = top_k(trained, row, top)
    if trained.loss_name == "mse":
        label, raw = best[0]
        return f"{path}: {label} (regression output {raw:.2f})"
    return f"{path}: " + "  ".join(f"{label} {p:.3f}" for label, p in best)


def _show_folder(text: str) -> Path:
    """The ``--show`` folder, created; checked before any image is read."""
    folder = check_folder(Path(text).expanduser(), "--show", given=text)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a race, or a file system that refuses mkdir where it allows files
        raise HandgradError(f"--show {text}: cannot create it ({exc.strerror})") from None
    return folder


def _save_seen(pixels: np.ndarray, folder: Path, source: Path, taken: set[str]) -> str:
    """Write ``pixels`` as ``folder/<source's stem>.png`` (``-2``, ``-3``... if that name was
    already written in this run); returns the name used."""
    from PIL import Image

    name, n = f"{source.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{source.stem}-{n}.png"
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    try:
        write_bytes(folder / name, buffer.getvalue())
    except OSError as exc:
        raise HandgradError(f"{folder / name}: cannot write it ({exc.strerror})") from None
    return name
