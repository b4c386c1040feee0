"""``handgrad lr-find``: the learning-rate range test, plotted.

    handgrad lr-find                          # mlp on mnist-sample, AdamW
    handgrad lr-find --opt sgd --out sgd.png

The learning rate rises exponentially from --start-lr to --end-lr over --steps training steps
on a fresh model; the plot shows the loss against it (log scale) with the suggested rate (where
the smoothed loss is lowest, divided by 10) marked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from handgrad.app.commands.train import add_common
from handgrad.app.config import TrainConfig, parse_hidden
from handgrad.app.plots.training import plot_lr_find
from handgrad.app.progress import say
from handgrad.app.run import build_run
from handgrad.app.ui import make_console
from handgrad.train.callbacks import lr_find


def add(sub: Any) -> None:
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: plot loss against learning rate, suggest one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100, help="training steps of the test")
    p.add_argument("--out", default=None, metavar="PNG", help="default runs/lr-find-<time>.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    fields = (
        "data",
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
    given = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if "hidden" in given:
        given["hidden"] = parse_hidden(given["hidden"])
    config = TrainConfig(**given).resolved()
    config.lr = args.start_lr
    run_ = build_run(config, for_training=False)
    finder = lr_find(run_.learn, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps)
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}.png"
    )
    plot_lr_find(
        finder,
        out,
        title=f"learning-rate finder: {config.model} on {run_.dataset.name}, "
        f"{config.opt}, bs {config.bs}",
    )
    suggestion = finder.suggestion
    say(
        console,
        f"{len(finder.lrs)} steps, lr {finder.lrs[0]:.1e} .. {finder.lrs[-1]:.1e}; plot {out}",
    )
    if suggestion is None:
        say(console, "no suggestion: the loss diverged at once; lower --start-lr")
        return 1
    say(console, f"suggested lr {suggestion:.2e}")
    return 0
