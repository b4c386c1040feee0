"""``handgrad train``: train a model with hand-written gradients, checkpoint it, report.

    handgrad train                                   # mlp on the embedded mnist-sample
    handgrad train --data fashion-mnist --epochs 30 --hidden 512,256
    handgrad train --model lesson                    # the lesson's 784-50-1 MSE net
    handgrad train --resume runs/<run>/last.safetensors --epochs 30
    handgrad train --resume runs/<run>/last.safetensors --epochs 35 --lr 1e-4 --schedule constant
    handgrad train --out runs/mlp --overwrite        # replace the run in runs/mlp
    handgrad train --nproc 2                         # data-parallel, 2 local processes
    torchrun --nproc-per-node 2 -m handgrad train    # the same, launched by torchrun

Options left out come from the model's recipe (``handgrad.train.recipes``). The run's folder
(``--out``, default runs/<date>-<time>-<model>) receives best/last checkpoints, history.png and
metrics.json; the last line printed holds the final validation metrics. Every output is checked
before training starts. A resumed run keeps its learning-rate schedule; epochs past its end keep
its last rate, unless --lr or --schedule start a new one (fine-tuning).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from handgrad import distributed
from handgrad.app.commands.options import add_data_source
from handgrad.app.config import TrainConfig, parse_hidden
from handgrad.app.fit import default_out, train
from handgrad.app.outputs import check_train_outputs
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError
from handgrad.nn.models import MODELS
from handgrad.train.recipes import recipe_for

#: option dest -> TrainConfig field (the same names)
FIELDS = (
    "data",
    "model",
    "hidden",
    "dropout",
    "epochs",
    "bs",
    "lr",
    "opt",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "shift",
    "flip",
    "erase",
    "seed",
    "device",
    "patience",
    "out",
    "quiet",
    "stop_after",
    "resume",
    "plots",
    "threads",
    "fast",
    "overwrite",
    "data_dir",
    "no_download",
    "logger",
    "subnormals",
)


#: Options whose default each model's recipe sets: (flag, type, help without the default).
RECIPE_OPTIONS = (
    ("--bs", int, "batch size"),
    ("--opt", str, "optimizer: sgd (Nesterov momentum), adam, adamw"),
    ("--weight-decay", float, "weight decay"),
    ("--label-smoothing", float, "label smoothing of the cross-entropy"),
    ("--shift", int, "augmentation: random shifts up to N pixels"),
    ("--erase", float, "augmentation: probability of erasing a random box of each image"),
)


def recipe_default(field: str) -> str:
    """``default by --model: lesson 10, mlp 20, cnn 10``: each model's recipe's ``field``."""
    values = {}
    for name in MODELS:
        value = getattr(recipe_for(name), field)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            values[name] = f"{value:g}" if isinstance(value, float) else text
    if len(set(values.values())) == 1 and len(values) == len(MODELS):
        return f"default: {next(iter(values.values()))}"
    return "default by --model: " + ", ".join(f"{k} {v}" for k, v in values.items())


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared with ``handgrad lr-find``."""
    p.add_argument(
        "--data", default=None, help="dataset: mnist-sample, mnist, fashion-mnist or a path "
        "(default: mnist-sample)"
    )  # fmt: skip
    add_data_source(p)
    p.add_argument("--model", default=None, help=f"model: {model_help()} (default: mlp)")
    p.add_argument(
        "--hidden", default=None, metavar="W1,W2",
        help=f"hidden widths, e.g. 256,128 ({recipe_default('hidden')})",
    )  # fmt: skip
    p.add_argument(
        "--dropout", type=float, default=None,
        help="dropout after each hidden layer (default: the model's own, 0 for mlp, 0.1 for cnn)",
    )  # fmt: skip
    for flag, kind, text in RECIPE_OPTIONS:
        field = flag[2:].replace("-", "_")
        p.add_argument(flag, type=kind, default=None, help=f"{text} ({recipe_default(field)})")
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=None,
        help="augmentation: random horizontal flips, on data whose classes allow them "
        f"(Fashion-MNIST; never digits) ({recipe_default('flip')})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed of everything random (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: cpu)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    p.add_argument(
        "--threads",
        default=None,
        metavar="N|auto",
        help="CPU threads (default: auto, all cores, fewer when the machine is busy)",
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="training steps of MLPs (Linear, the activations, Dropout, BatchNorm1d; SGD, Adam, "
        "AdamW fused in) through the compiled fast path (default; built on first use; other "
        "models say so and train as usual); --no-fast or HANDGRAD_FAST=0: the readable path. "
        "A resumed run keeps the path it was trained on",
    )


def model_help() -> str:
    """``lesson (784-50-1 MSE regression), mlp (...), cnn (...)``: every recipe, described."""
    return ", ".join(
        f"{name} ({MODEL_NOTES[name]})" if name in MODEL_NOTES else name for name in MODELS
    )


#: What each model is, for --model's help.
MODEL_NOTES = {
    "lesson": "the lesson's 784-50-1 net, MSE on the digit's value",
    "mlp": "Linear-ReLU blocks of --hidden widths",
    "cnn": "5 conv-batchnorm-ReLU blocks, 16-128 channels, global average pool",
    "resnet": "a conv stem and 4 residual blocks, 16-128 channels, global average pool",
}


def add(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: an MLP on the embedded mnist-sample digits)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument(
        "--epochs", type=int, default=None,
        help=f"epochs in all; when resuming, where the run ends ({recipe_default('epochs')})",
    )  # fmt: skip
    p.add_argument(
        "--lr", type=float, default=None,
        help="(peak) learning rate; when resuming, starts a new --schedule from the resumed "
        f"epoch ({recipe_default('lr')})",
    )  # fmt: skip
    p.add_argument(
        "--schedule", default=None, help="learning-rate schedule: onecycle, cosine, step, "
        f"constant; when resuming, a new one from the resumed epoch ({recipe_default('schedule')})",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=int, default=None,
        help="early stopping after N epochs without progress (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, metavar="DIR",
        help="the run's folder (default: runs/<date>-<time>-<model>; when resuming, the "
        "checkpoint's folder)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", default=None,
        help="replace the run already in --out: its checkpoints, metrics, plots/ and report.html "
        "are removed first (without it, such an --out is refused)",
    )  # fmt: skip
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after epoch N of this run (continue later with --resume; default: no stop)",
    )
    p.add_argument(
        "--resume", default=None, metavar="CKPT",
        help="continue a run's last.safetensors (default: a new run)",
    )  # fmt: skip
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write every plot there: curves, LR finder, confusion matrix, per-layer activation "
        "and gradient statistics, dead units, confident mistakes (default: history.png only)",
    )
    p.add_argument(
        "--logger", default=None, metavar="NAMES",
        help="per-epoch logs in the run folder, comma-separated: csv (history.csv), tensorboard "
        "(tensorboard/, needs the tensorboard package); '' for none (default: csv)",
    )  # fmt: skip
    p.add_argument(
        "--subnormals", default=None, choices=("flush", "keep"),
        help="subnormal floats while training on the CPU: flush to zero (faster: Adam's "
        "moments decay into them) or keep (IEEE); a resumed run keeps its own (default: flush)",
    )  # fmt: skip
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel training in N local processes (gloo on CPU, NCCL on CUDA: one GPU "
        "each); --bs stays the global batch. Under torchrun, its processes are used instead",
    )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The config and the set of options the user gave (the rest keep their defaults)."""
    given = {f for f in FIELDS if getattr(args, f, None) is not None}
    defaults = TrainConfig()
    values = {f: getattr(args, f) if f in given else getattr(defaults, f) for f in FIELDS}
    if values["hidden"] is not None:
        values["hidden"] = parse_hidden(values["hidden"])
    return TrainConfig(**values), given


def run(args: argparse.Namespace) -> int:
    config, given = config_from_args(args)
    if args.nproc < 1:
        raise HandgradError(f"--nproc {args.nproc}: give a positive number of processes")
    if args.nproc == 1 and not distributed.launched_by_torchrun():
        train(config, make_console(), given=given)
        return 0
    if not config.resume:
        # Checked once, here (exit status 2), rather than in every rank.
        bs = config.resolved().bs or 1
        torchrun = distributed.launched_by_torchrun()
        world = int(os.environ["WORLD_SIZE"]) if torchrun else args.nproc
        if bs % world:
            raise HandgradError(
                f"--bs {bs}: the global batch must split evenly between {world} processes; "
                f"give a multiple of {world}"
            )
        if not config.out:
            # Decided once, here: every rank must agree on where rank 0 writes.
            config = dataclasses.replace(config, out=str(default_out(config.model)))
        # Checked here too, so that a bad --out is one line and exit status 2, not N ranks.
        check_train_outputs(
            Path(config.out), config.plots, resumed_from=None, overwrite=config.overwrite
        )
    try:
        distributed.run(train_rank, args.nproc, config, given, device=config.device or "cpu")
    except distributed.DistributedError as exc:
        print(f"handgrad train: error: {exc}", file=sys.stderr)
        return 1
    return 0


def train_rank(ctx: distributed.DistContext, config: TrainConfig, given: set[str]) -> None:
    """One process of ``handgrad train --nproc N`` (or of torchrun): rank 0 prints."""
    console = make_console() if ctx.is_main else Console(quiet=True)
    train(config, console, given=given, ctx=ctx)
