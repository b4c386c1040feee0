"""Subnormals as a policy (issue 16): what flushing them to zero costs in accuracy and buys in
time.

Run: ``PYTHONPATH=src python benchmarks/bench_subnormals.py [--seeds 4] [--epochs 10]``
(``--train-args "--epochs 40"`` adds options to every training run; ``--skip-accuracy`` and
``--skip-timing`` run one half)

1. Accuracy: ``handgrad train --seed S --quiet --subnormals {flush,keep}`` (the default ``mlp``
   recipe on mnist-sample), one process per run, the final and best validation accuracy.
2. Time: W3 of ``handgrad bench`` (784-256-128-10, Adam, batch 256, 50,000 random MNIST-shaped
   rows) for ``--epochs`` epochs, PyTorch eager and handgrad's readable loop, each with
   subnormals kept and flushed (all four in this process, an epoch of each in turn, rotating);
   per epoch the time, and the number of subnormal entries in Adam's state at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from handgrad.app.bench.data import Batches, make_data
from handgrad.app.bench.models import handgrad_mlp, mlp_init, torch_mlp
from handgrad.app.bench.training import HandgradTrain, TorchTrain
from handgrad.train.checkpoint import load_checkpoint
from handgrad.train.subnormals import set_flush

SIZES, LR, BATCH = [784, 256, 128, 10], 1e-3, 256


def accuracy(seed: int, policy: str, out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(final, best) validation accuracy of ``handgrad train`` with ``policy``, and how many
    subnormal entries its last checkpoint holds (weights and optimizer state)."""
    cmd = [sys.executable, "-m", "handgrad", "train", "--seed", str(seed), "--quiet"]
    cmd += ["--out", str(out), "--subnormals", policy, *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = json.loads((out / "metrics.json").read_text())
    saved = load_checkpoint(out / "last.safetensors").tensors.values()
    count = subnormal_count([t for t in saved if t.is_floating_point()])
    return m["valid_accuracy"], m["best"]["valid_accuracy"], count


def subnormal_count(state: list[torch.Tensor]) -> int:
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in state)


def adam_state(job: object) -> list[torch.Tensor]:
    """Adam's moment estimates: ``torch.optim``'s per-parameter state, or handgrad's columns."""
    opt = job.opt  # type: ignore[attr-defined]
    if isinstance(opt, torch.optim.Optimizer):
        return [v for s in opt.state.values() for v in s.values() if v.ndim > 0]
    return [t for column in opt.state.values() for t in column if t is not None]


def timing(epochs: int, rows: int) -> dict[str, list[float]]:
    x, y = make_data(rows, 0)
    b = Batches(x, y, BATCH)
    init = mlp_init(SIZES, 0)
    names = [n for n, _ in handgrad_mlp(init).named_parameters()]
    jobs = {
        "torch eager, keep": (TorchTrain(lambda: torch_mlp(init), b, names, "adam", LR), False),
        "torch eager, flush": (TorchTrain(lambda: torch_mlp(init), b, names, "adam", LR), True),
        "handgrad, keep": (HandgradTrain(lambda: handgrad_mlp(init), b, "adam", LR, "loop"), False),
        "handgrad, flush": (HandgradTrain(lambda: handgrad_mlp(init), b, "adam", LR, "loop"), True),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    labels = list(jobs)
    for e in range(epochs):
        k = e % len(labels)
        for label in labels[k:] + labels[:k]:
            job, flush = jobs[label]
            set_flush(flush)
            t0 = time.perf_counter()
            job.run()
            times[label].append(time.perf_counter() - t0)
            set_flush(False)
    for label, (job, _) in jobs.items():
        print(f"{label}: {subnormal_count(adam_state(job)):,} subnormal entries in Adam's state")
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--train-args", default="", help="more options for every training run")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_accuracy:
        print("| seed | flush: final (best), subnormals saved | keep: the same |\n|---|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.seeds):
                cells = []
                for policy in ("flush", "keep"):
                    out = Path(tmp) / f"{policy}-{seed}"
                    final, best, n = accuracy(seed, policy, out, args.train_args.split())
                    cells.append(f"{final:.4f} ({best:.4f}), {n:,}")
                print(f"| {seed} | {' | '.join(cells)} |", flush=True)
    if args.skip_timing:
        return
    times = timing(args.epochs, args.rows)
    print("\n| W3 epoch | " + " | ".join(times) + " |")
    print("|---|" + "---:|" * len(times))
    for e in range(args.epochs):
        print(f"| {e + 1} | " + " | ".join(f"{ts[e]:.3f} s" for ts in times.values()) + " |")
    late = slice(3, None)  # from the fourth epoch, when Adam's moments have decayed
    print(
        "| median, epochs 4+ | "
        + " | ".join(f"{statistics.median(ts[late]):.3f} s" for ts in times.values())
        + " |"
    )


if __name__ == "__main__":
    main()
