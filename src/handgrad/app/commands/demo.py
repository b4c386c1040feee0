"""``handgrad demo``: the lesson's full-batch forward/backward, by hand vs autograd."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from handgrad.app.demo import run_lesson
from handgrad.app.ui import make_console


def add(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the lesson's 784-50-1 MSE net: forward and backward by "
        "hand and by autograd, gradients compared, both timed",
    )
    p.add_argument("--rows", type=int, default=50_000, help="rows of generated data")
    p.add_argument("--hidden", type=int, default=50, help="hidden units of the 784-H-1 MLP")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and weights")
    p.add_argument(
        "--no-input-grad",
        action="store_true",
        help="skip the gradient of the input (the data needs none)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    r = run_lesson(
        rows=args.rows,
        hidden=args.hidden,
        repeats=args.repeats,
        seed=args.seed,
        input_grad=not args.no_input_grad,
    )
    console.print(
        f"data: {r.rows:,} generated MNIST-shaped rows x {r.features} pixels; "
        f"net {r.features}-{r.hidden}-1 with MSE"
    )
    console.print(
        f"first MSE with the lesson's randn init: {r.loss_randn:,.1f}; "
        f"with Kaiming init: {r.loss_kaiming:.2f}"
    )
    t = Table(title=f"median of {args.repeats} rounds, same process, alternating")
    for col in ("pass", "handgrad (ms)", "autograd (ms)", "speed-up"):
        t.add_column(col, justify="right")
    for name, (ours, theirs) in r.times.items():
        t.add_row(name, f"{ours * 1e3:.1f}", f"{theirs * 1e3:.1f}", f"{theirs / ours:.2f}x")
    console.print(t)
    worst = max(r.grad_errors.values())
    for name, err in r.grad_errors.items():
        console.print(f"  {name:<16} max |hand - autograd| / max |autograd| = {err:.1e}")
    ok = worst < 1e-4
    console.print("gradients match autograd (float32)" if ok else "[red]gradients differ[/red]")
    return 0 if ok else 1
