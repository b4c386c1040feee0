"""What recording per-layer statistics costs a training step.

Run: ``PYTHONPATH=src python benchmarks/bench_stats.py [--repeats 7] [--steps 50]``

One training step of the MLP 784-256-128-10 (batch 64 and 256: forward, cross-entropy, the
hand-written backward, an Adam step) is timed plain and with
:class:`handgrad.train.stats.StatsHooks` recording activations and gradients of every layer
at ``every`` = 1, 10 and 50 batches. Each round times ``steps`` steps of each variant,
alternating; the table shows the median over
``repeats`` rounds and the overhead relative to the plain step measured in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Module
from handgrad.optim.optimizers import Adam
from handgrad.train.stats import StatsHooks

EVERY = (1, 10, 50)


def make_step(model: Module, batch: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 784, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    loss_fn, opt = CrossEntropyLoss(), Adam(model.parameters(), 1e-4)

    def step() -> None:
        loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0], need_input_grad=False)
        opt.step()
        opt.zero_grad()

    return step


def time_steps(step: Callable[[], None], steps: int) -> float:
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | stats recorded | ms / step | overhead |")
    print("|---:|---|---:|---:|")
    for batch in (64, 256):
        variants: dict[str, tuple[Module, Callable[[], None]]] = {}
        for every in (None, *EVERY):
            model = build_model("mlp", generator=torch.Generator().manual_seed(0))
            if every is not None:
                StatsHooks(model, every=every)  # stays registered for the whole benchmark
            label = "none" if every is None else f"every {every} batch(es)"
            variants[label] = (model, make_step(model, batch))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for label, (_, step) in variants.items():
                times[label].append(time_steps(step, args.steps))
        base = statistics.median(times["none"])
        for label, ts in times.items():
            t = statistics.median(ts)
            over = "-" if label == "none" else f"{100 * (t / base - 1):+.0f}%"
            print(f"| {batch} | {label} | {1e3 * t:.2f} | {over} |")


if __name__ == "__main__":
    main()
