"""``handgrad evaluate CKPT``: loss, accuracy and confusion matrix of a trained checkpoint.

    handgrad evaluate runs/<run>/best.safetensors                 # its own data: test, else valid
    handgrad evaluate runs/<run>/best.safetensors --data mnist --split test
    handgrad evaluate runs/<run>/best.safetensors --tta          # also with test-time flips

The confusion matrix is printed and saved as a PNG (default: next to the checkpoint).

Data whose classes are not the model's (a digit model on Fashion-MNIST) is refused with exit
status 2, since its accuracy would mean nothing; ``--other-classes`` evaluates it anyway.
``--data-dir`` and ``--no-download`` work as for ``handgrad data``. ``--tta`` (Fashion-MNIST
models) also reports the accuracy of test-time augmentation, the class probabilities averaged
over each image and its mirror image, beside the plain figure.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from handgrad.app.commands.options import add_data_source
from handgrad.app.outputs import check_file, check_folder
from handgrad.app.plots.training import plot_confusion
from handgrad.app.ui import download_bar, make_console
from handgrad.data import load_dataset
from handgrad.errors import HandgradError
from handgrad.train.inference import check_input_size, check_tta, evaluate, load_trained

SPLITS = ("test", "valid", "train")


def add(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, loss and confusion matrix of a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors written by handgrad train")
    p.add_argument("--data", default=None, help="dataset name or path (default: the training data)")
    p.add_argument(
        "--split", choices=SPLITS, default=None, help="default: test if there is one, else valid"
    )
    p.add_argument(
        "--out", default=None, metavar="PNG",
        help="where to save the confusion matrix (default: confusion-<data>-<split>.png next to "
        "the checkpoint)",
    )  # fmt: skip
    p.add_argument(
        "--other-classes",
        action="store_true",
        help="evaluate even on data whose classes are not the model's",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="also report test-time augmentation: probabilities averaged over each image and "
        "its mirror image (Fashion-MNIST models; never digits)",
    )
    add_data_source(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    trained = load_trained(args.checkpoint)
    if args.tta:  # refused before any data is loaded
        check_tta(trained)
    if args.out:  # checked before the data is loaded and the model run
        check_file(args.out, "--out")
    else:
        check_folder(trained.ckpt.path.parent, "--out (default: beside the checkpoint)")
    data_name = args.data or trained.data.get("source") or trained.data["name"]
    if args.data is None and not Path(str(data_name)).exists():
        data_name = trained.data["name"]
    dataset = load_dataset(
        data_name, data_dir=args.data_dir, download=not args.no_download, progress=download_bar
    )
    split_name = args.split or ("test" if dataset.test is not None else "valid")
    split = dataset.splits().get(split_name)
    if split is None:
        raise HandgradError(f"{dataset.name}: has no {split_name} split; use --split valid")
    n_features = int(math.prod(dataset.image_shape))
    check_input_size(trained, n_features, dataset.image_shape, str(data_name))
    if dataset.classes != trained.data["classes"] and not args.other_classes:
        raise HandgradError(
            f"{data_name}: its classes ({_names(dataset.classes)}) are not the model's "
            f"({_names(trained.data['classes'])}), so its accuracy would mean nothing; evaluate "
            "on data of the model's classes, or add --other-classes to evaluate anyway"
        )
    if split.y.numel() and int(split.y.max()) >= len(trained.data["classes"]):
        raise HandgradError(
            f"{data_name}: labels up to {int(split.y.max())}, but the model knows "
            f"{len(trained.data['classes'])} classes; evaluate on the data it was trained for"
        )
    result = evaluate(trained, split.x.reshape(len(split.x), -1), split.y, tta=args.tta)
    classes = trained.data["classes"]
    out = (
        Path(args.out)
        if args.out
        else (trained.ckpt.path.parent / f"confusion-{_slug(dataset.name)}-{split_name}.png")
    )
    plot_confusion(
        result.confusion,
        classes,
        out,
        title=f"{trained.ckpt.path.parent.name}/{trained.ckpt.path.name} on {dataset.name} "
        f"{split_name}",
    )
    console.print(_table(result.confusion, classes))
    console.print(
        f"{trained.ckpt.path} on {dataset.name} {split_name} ({result.n:,} images): "
        f"confusion matrix {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    tta = "" if result.tta_accuracy is None else f" tta accuracy {result.tta_accuracy:.4f}"
    console.print(
        f"loss {result.loss:.4f} accuracy {result.accuracy:.4f}{tta}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _names(classes: list[str]) -> str:
    """``0, 1, 2, ...`` or ``T-shirt/top, Trouser, Pullover, ...``: enough to tell them apart."""
    return ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")


def _slug(name: str) -> str:
    """A file-name part from a dataset name or path: ``data/tiny.npz`` -> ``tiny``."""
    return Path(name).name.split(".")[0] or "data"


def _table(matrix: Any, classes: list[str]) -> Table:
    t = Table(title="confusion matrix (rows: true class, columns: predicted)")
    t.add_column("true \\ pred", justify="right")
    for c in classes:
        t.add_column(c[:12], justify="right")
    t.add_column("recall", justify="right")
    for i, c in enumerate(classes):
        row = matrix[i]
        total = row.sum()
        recall = f"{row[i] / total:.3f}" if total else "-"
        cells = [
            f"[bold]{v}[/bold]" if j == i else (str(v) if v else ".") for j, v in enumerate(row)
        ]
        t.add_row(c, *cells, recall)
    return t
