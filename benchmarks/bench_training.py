"""A training epoch: the Learner with its callbacks, a bare hand-written loop, and PyTorch
autograd, on the same data, measured in the same process, alternating, median of repeats.

Run: ``PYTHONPATH=src python benchmarks/bench_training.py [--repeats 7] [--epochs 1]``

Workload: mnist-sample's 4,000 training digits, MLP 784-256-128-10, batch 128 (32 steps per
epoch), AdamW, cross-entropy; no augmentation (it is the same cost for every variant).

- ``learner``: ``Learner.fit`` with Metrics, Recorder, LRScheduler and NonFiniteGuard: what
  ``handgrad train`` runs, less the progress bar and the checkpoint writes.
- ``bare loop``: the same hand-written forward/backward/step without the Learner.
- ``torch autograd``: ``torch.nn`` + ``torch.optim.AdamW`` + ``F.cross_entropy``, the same
  weights and batches.

The learner/bare-loop ratio is the Learner's per-batch overhead; torch/learner is the speed-up
of hand-written gradients over autograd for a whole training epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import nn

from handgrad.data import DataLoader, load_dataset
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import AdamW
from handgrad.optim.schedules import OneCycle
from handgrad.train.callbacks import LRScheduler, Metrics, NonFiniteGuard, Recorder
from handgrad.train.learner import Learner
from handgrad.train.recipes import metric_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed round")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = load_dataset("mnist-sample", progress=False)
    x, y = ds.train.x, ds.train.y
    mean, std = float(x.mean()), float(x.std())
    dl = DataLoader(x, y, 128, shuffle=True, seed=0, mean=mean, std=std)
    valid = DataLoader(ds.valid.x, ds.valid.y, 1024, mean=mean, std=std)
    steps = len(dl) * args.epochs

    model = build_model("mlp", hidden=(256, 128), generator=torch.Generator().manual_seed(0))
    twin = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    with torch.no_grad():
        for ours, theirs in zip(
            [m for m in model.layers if hasattr(m, "weight")], twin[::2], strict=True
        ):
            theirs.weight.copy_(ours.weight.t())
            theirs.bias.copy_(ours.bias)

    loss_fn = CrossEntropyLoss()
    opt = AdamW(model.parameters(), 1e-3)
    learn = Learner(
        model,
        loss_fn,
        opt,
        dl,
        valid,
        [
            Metrics(accuracy=metric_for("cross_entropy")),
            Recorder(),
            NonFiniteGuard(),
            LRScheduler(OneCycle(1e-3, steps)),
        ],
    )

    def run_learner() -> None:
        learn.fit(args.epochs)

    def run_bare() -> None:
        with torch.no_grad():
            for _ in range(args.epochs):
                model.train()
                loss_fn.train()
                for xb, yb in dl:
                    loss_fn(model(xb), yb)
                    model.backward(loss_fn.backward()[0], need_input_grad=False)
                    opt.step()
                    opt.zero_grad()
                model.eval()
                loss_fn.eval()
                for xb, yb in valid:
                    loss_fn(model(xb), yb)

    topt = torch.optim.AdamW(twin.parameters(), 1e-3)

    def run_torch() -> None:
        for _ in range(args.epochs):
            twin.train()
            for xb, yb in dl:
                loss = TF.cross_entropy(twin(xb), yb)
                topt.zero_grad()
                loss.backward()
                topt.step()
            twin.eval()
            with torch.no_grad():
                for xb, yb in valid:
                    TF.cross_entropy(twin(xb), yb)

    variants: dict[str, Callable[[], None]] = {
        "learner": run_learner,
        "bare loop": run_bare,
        "torch autograd": run_torch,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up round, not counted
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(
        f"{args.epochs} epoch(s) of {len(dl)} steps (bs 128) + validation; median of "
        f"{args.repeats} rounds, alternating"
    )
    for name, t in med.items():
        print(f"  {name:<15} {t * 1e3:8.1f} ms/epoch  {t / steps * 1e3:6.2f} ms/step")
    print(f"Learner overhead vs bare loop: {med['learner'] / med['bare loop'] - 1:+.1%}")
    print(f"torch autograd / handgrad learner: {med['torch autograd'] / med['learner']:.2f}x")


if __name__ == "__main__":
    main()
