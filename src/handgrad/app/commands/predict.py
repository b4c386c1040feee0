"""``handgrad predict CKPT IMAGE...``: classify PNG/JPEG images with a trained checkpoint.

    handgrad predict runs/<run>/best.safetensors my_digit.png photo.jpg

Each image (any size) is turned into what the model was trained on: grayscale, light ink on a
dark background (inverted if needed), digits centred in 28x28 as MNIST's were, and normalised
with the training data's mean and std. Prints the top classes with their probabilities.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from handgrad.app.ui import make_console
from handgrad.train.inference import load_image, load_trained, top_k


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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    trained = load_trained(args.checkpoint)
    rows = torch.stack([load_image(path, trained) for path in args.images])
    for path, best in zip(args.images, top_k(trained, rows, max(1, args.top)), strict=True):
        if trained.loss_name == "mse":
            label, raw = best[0]
            text = f"{path}: {label} (regression output {raw:.2f})"
        else:
            text = f"{path}: " + "  ".join(f"{label} {p:.3f}" for label, p in best)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0
