"""``handgrad lr-find``: the learning-rate range test, plotted.

    handgrad lr-find                          # mlp on mnist-sample, AdamW
    handgrad lr-find --opt sgd --out sgd.png

The learning rate rises exponentially from --start-lr to --end-lr over --steps training steps
on a fresh model; the plot shows the loss against it (log scale) with the suggested rate (where
the smoothed loss is lowest, divided by 10) marked. The last line is the ``handgrad train``
command that trains at the suggested rate with the same options.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from typing import Any

from handgrad.app.commands.train import add_common
from handgrad.app.config import TrainConfig, parse_hidden
from handgrad.app.outputs import check_file
from handgrad.app.plots.training import plot_lr_find
from handgrad.app.progress import say
from handgrad.app.run import build_run
from handgrad.app.text import plural
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError
from handgrad.train.callbacks import lr_find

#: The options lr-find shares with ``handgrad train`` (dest names, as TrainConfig's fields).
FIELDS = (
    "data",
    "data_dir",
    "no_download",
    "model",
    "hidden",
    "dropout",
    "bs",
    "opt",
    "weight_decay",
    "label_smoothing",
    "shift",
    "seed",
    "device",
    "quiet",
    "threads",
)


def add(sub: Any) -> None:
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: plot loss against learning rate, suggest one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--start-lr", type=float, default=1e-6, help="the first learning rate")
    p.add_argument("--end-lr", type=float, default=10.0, help="the last learning rate")
    p.add_argument("--steps", type=int, default=100, help="training steps of the test")
    p.add_argument(
        "--out", default=None, metavar="PNG", help="the plot (default: runs/lr-find-<time>.png)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    given = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    if "hidden" in given:
        given["hidden"] = parse_hidden(given["hidden"])
    if not 0 < args.start_lr < args.end_lr < math.inf:
        raise HandgradError(
            f"--start-lr {args.start_lr:g} --end-lr {args.end_lr:g}: give finite rates with "
            "0 < start < end"
        )
    if args.steps < 2:
        raise HandgradError(f"--steps {args.steps}: give at least 2 steps")
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}.png"
    )
    check_file(out, "--out")
    config = TrainConfig(**given).resolved()
    config.lr = args.start_lr
    run_ = build_run(config, for_training=False)
    finder = lr_find(run_.learn, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps)
    plot_lr_find(
        finder,
        out,
        title=f"learning-rate finder: {config.model} on {run_.dataset.name}, "
        f"{config.opt}, bs {config.bs}",
    )
    suggestion = finder.suggestion
    say(
        console,
        f"{plural(len(finder.lrs), 'step')}, lr {finder.lrs[0]:.1e} .. {finder.lrs[-1]:.1e}; "
        f"plot {out}",
    )
    if suggestion is None:
        say(console, "no suggestion: the loss diverged at once; lower --start-lr")
        return 1
    say(console, f"suggested lr {suggestion:.2e}; to train with it:")
    say(console, train_command(args, suggestion))
    return 0


def train_command(args: argparse.Namespace, lr: float) -> str:
    """``handgrad train --data ... --lr 1.2e-03``: the options given here, and the rate."""
    argv = ["handgrad", "train"]
    for field in FIELDS:
        value = getattr(args, field)
        if field == "quiet" or value is None:
            continue
        argv.append("--" + field.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return shlex.join([*argv, "--lr", f"{lr:.1e}"])
