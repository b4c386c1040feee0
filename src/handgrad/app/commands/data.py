"""``handgrad data``: look at a dataset before training on it.

    handgrad data info mnist-sample            # splits, shapes, classes, mean/std, source
    handgrad data info data/mnist.pkl.gz       # any file or folder (.pkl.gz, .npz, IDX)
    handgrad data show fashion-mnist --out grid.png --split valid --count 48
    handgrad data show fashion-mnist --augment --out augmented.png  # as the resnet recipe trains

Named datasets: mnist-sample (embedded, needs the 'data' extra), mnist, fashion-mnist (found
on this machine or downloaded, SHA-256 verified, into $HANDGRAD_DATA or the cache folder).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from rich.table import Table

from handgrad.app.commands.options import add_data_source
from handgrad.app.ui import download_bar, make_console
from handgrad.data import Dataset, load_dataset, pixel_stats
from handgrad.data.augment import augment_batch, flips_allowed
from handgrad.errors import HandgradError
from handgrad.train.recipes import recipe_for


def add(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="describe a dataset or draw a grid of its samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="splits, shapes, classes and counts, mean/std, source")
    _add_source(info)
    info.set_defaults(run=run_info)
    show = actions.add_parser("show", help="a PNG grid of samples, each labelled with its class")
    _add_source(show)
    show.add_argument("--out", default="samples.png", help="PNG to write (default samples.png)")
    show.add_argument(
        "--split", default="train", choices=("train", "valid", "test"), help="which split"
    )
    show.add_argument("--count", type=int, default=36, help="samples to draw (default 36)")
    show.add_argument("--seed", type=int, default=0, help="which random samples (default 0)")
    show.add_argument(
        "--augment",
        action="store_true",
        help="draw the samples as the resnet recipe's training sees them: random crops, "
        "flips (Fashion-MNIST only) and random erasing, seeded by --seed",
    )
    show.set_defaults(run=run_show)


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", metavar="NAME|PATH", help="mnist-sample, mnist, fashion-mnist or a path"
    )
    add_data_source(p)


def _load(args: argparse.Namespace) -> Dataset:
    return load_dataset(
        args.dataset, data_dir=args.data_dir, download=not args.no_download, progress=download_bar
    )


def run_info(args: argparse.Namespace) -> int:
    console = make_console()
    ds = _load(args)
    c, h, w = ds.image_shape
    console.print(
        f"[bold]{ds.name}[/bold]: {ds.n_classes} classes, images {c}x{h}x{w} "
        f"({ds.n_features} features per row), pixels float32 in [0, 1]"
    )
    console.print(f"found at: {ds.source}")
    console.print(f"splits: {ds.split_note}")
    splits = ds.splits()
    t = Table(title="splits")
    for col in ("split", "rows", "x", "y", "pixel mean", "pixel std", "min", "max"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name, s in splits.items():
        mean, std = pixel_stats(s.x)
        t.add_row(
            name,
            f"{len(s):,}",
            f"{tuple(s.x.shape)} {str(s.x.dtype).removeprefix('torch.')}",
            f"{tuple(s.y.shape)} {str(s.y.dtype).removeprefix('torch.')}",
            f"{mean:.4f}",
            f"{std:.4f}",
            f"{float(s.x.min()):.3g}",
            f"{float(s.x.max()):.3g}",
        )
    console.print(t)
    counts = Table(title="samples per class")
    counts.add_column("label", justify="right")
    counts.add_column("class")
    for name in splits:
        counts.add_column(name, justify="right")
    per_split = {n: torch.bincount(s.y, minlength=ds.n_classes).tolist() for n, s in splits.items()}
    for label, cls in enumerate(ds.classes):
        counts.add_row(str(label), cls, *(f"{per_split[n][label]:,}" for n in splits))
    console.print(counts)
    mean, std = pixel_stats(ds.train.x)
    console.print(
        f"normalize with mean={mean:.4f}, std={std:.4f} (training pixels): "
        "DataLoader(..., mean=mean, std=std)"
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from handgrad.app.plots import new_figure, save_png  # matplotlib only when drawing

    if args.count < 1:
        raise HandgradError(f"--count {args.count}: give a positive number of samples")
    if not str(args.out).lower().endswith(".png"):
        raise HandgradError(f"--out {args.out}: the grid is written as PNG; name it *.png")
    ds = _load(args)
    split = ds.splits().get(args.split)
    if split is None:
        raise HandgradError(
            f"{ds.name} has no {args.split} split (it has {', '.join(ds.splits())}); "
            "choose another --split"
        )
    count = min(args.count, len(split))
    g = torch.Generator().manual_seed(args.seed)
    picks = torch.randperm(len(split), generator=g)[:count]  # (count,) a random, mixed choice
    x = split.x[picks].reshape(count, -1)  # (count, C*H*W)
    what = "samples"
    if args.augment:
        x, what = _augmented(ds, x, g), "augmented samples"
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig, axes = new_figure(
        1.25 * cols, 1.4 * rows + 0.3, nrows=rows, ncols=cols, squeeze=False, layout="constrained"
    )
    c, h, w = ds.image_shape
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, i) in enumerate(zip(axes.flat, picks.tolist(), strict=False)):
        image = x[k].reshape(c, h, w)[0].numpy()  # (H, W), first channel
        ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
        label = int(split.y[i])
        name = ds.classes[label]
        ax.set_title(str(label) if name == str(label) else f"{label}: {name}", fontsize=9, pad=2)
    fig.suptitle(
        f"{ds.name}, {args.split} split: {count} of {len(split):,} {what} (seed {args.seed})"
    )
    path = save_png(fig, args.out)
    make_console().print(f"wrote {path} ({count} {args.split} {what} of {ds.name})")
    return 0


def _augmented(ds: Dataset, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x`` (N, C*H*W) raw pixels as the ``resnet`` recipe's training batches see them: the
    augmentation runs on normalised pixels (erased patches are N(0, 1) noise there, crops
    fill with the background), drawn back in raw pixel units (shown clipped to [0, 1])."""
    recipe = recipe_for("resnet")
    mean, std = pixel_stats(ds.train.x)
    normed = augment_batch(
        (x - mean) / std,
        shift=recipe.shift,
        flip=recipe.flip and flips_allowed(ds.classes),
        erase=recipe.erase,
        image_shape=ds.image_shape,
        fill=-mean / std,
        generator=g,
    )
    return normed * std + mean
