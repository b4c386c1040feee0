"""``handgrad train``: train a model with hand-written gradients, checkpoint it, report.

    handgrad train                                   # mlp on the embedded mnist-sample
    handgrad train --data fashion-mnist --epochs 30 --hidden 512,256
    handgrad train --model lesson                    # the lesson's 784-50-1 MSE net
    handgrad train --resume runs/<run>/last.safetensors --epochs 30
    handgrad train --nproc 2                         # data-parallel, 2 local processes
    torchrun --nproc-per-node 2 -m handgrad train    # the same, launched by torchrun

Options left out come from the model's recipe (``handgrad.train.recipes``). The run's folder
(``--out``, default runs/<date>-<time>-<model>) receives best/last checkpoints, history.png and
metrics.json; the last line printed holds the final validation metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from rich.console import Console

from handgrad import distributed
from handgrad.app.config import TrainConfig, parse_hidden
from handgrad.app.fit import default_out, train
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError

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
)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared with ``handgrad lr-find``."""
    p.add_argument("--data", default=None, help="dataset name or path (default: mnist-sample)")
    p.add_argument("--model", default=None, help="model name: lesson, mlp, ... (default: mlp)")
    p.add_argument("--hidden", default=None, metavar="W1,W2", help="hidden widths, e.g. 256,128")
    p.add_argument("--dropout", type=float, default=None, help="dropout after each hidden layer")
    p.add_argument("--bs", type=int, default=None, help="batch size")
    p.add_argument("--opt", default=None, help="optimizer: sgd (Nesterov momentum), adam, adamw")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument(
        "--shift", type=int, default=None, help="augmentation: random shifts up to N pixels"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of everything random (default 0)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, auto")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    p.add_argument(
        "--threads",
        default=None,
        metavar="N|auto",
        help="CPU threads (default auto: all cores, fewer when the machine is busy)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="training steps of Linear/ReLU models through the compiled fast path "
        "(FastLearner; built on first use; other models say so and train as usual)",
    )


def add(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: an MLP on the embedded mnist-sample digits)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="(peak) learning rate")
    p.add_argument("--schedule", default=None, help="onecycle, cosine, step, constant")
    p.add_argument(
        "--patience", type=int, default=None, help="early stopping after N epochs without progress"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="output folder")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after epoch N of this run (continue later with --resume)",
    )
    p.add_argument(
        "--resume", default=None, metavar="CKPT", help="continue a run's last.safetensors"
    )
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write every plot there: curves, LR finder, confusion matrix, per-layer activation "
        "and gradient statistics, dead units, confident mistakes",
    )
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
