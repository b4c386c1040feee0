"""Accuracy of the ``cnn`` recipe, trained by a minimal handgrad loop (no Learner, no CLI).

    PYTHONPATH=src python benchmarks/cnn_accuracy.py mnist-sample
    PYTHONPATH=src python benchmarks/cnn_accuracy.py fashion-mnist

The data (``handgrad.data.load_dataset`` and its ``DataLoader``, with the training split's
mean and std), model, loss (cross-entropy with label smoothing 0.1), optimizer (AdamW, weight
decay 0.01) and schedule (one-cycle, max lr 0.01) are handgrad's, and every gradient is the
hand-written one. The loop is deliberately bare so that these figures do not depend on the
Learner; ``handgrad train --model cnn`` is the user-facing way to get them. It trains on the
``train`` split (mnist-sample: 4,000 digits; fashion-mnist: the first 50,000 of the 60,000
training images) and reports the ``valid`` and, where there is one, the ``test`` accuracy
after every epoch.
"""

from __future__ import annotations

import argparse
import time

import torch

from handgrad.data import DataLoader, load_dataset
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import AdamW
from handgrad.optim.schedules import OneCycle


def evaluate(model, x: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> float:
    model.eval()
    correct = sum(
        (model((x[i : i + 1000] - mean) / std).argmax(1) == y[i : i + 1000]).sum().item()
        for i in range(0, len(x), 1000)
    )
    model.train()
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="mnist-sample, fashion-mnist, mnist or a path")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (sample) or 8")
    p.add_argument("--batch", type=int, default=None, help="default 64 (sample) or 128")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, progress=False)
    small = len(ds.train.x) < 10_000
    epochs = args.epochs or (10 if small else 8)
    batch = args.batch or (64 if small else 128)
    mean, std = ds.train.x.mean().item(), ds.train.x.std().item()
    train = DataLoader(ds.train.x, ds.train.y, batch, shuffle=True, seed=args.seed,
                       drop_last=True, mean=mean, std=std)  # fmt: skip

    torch.manual_seed(args.seed)
    model = build_model("cnn", generator=torch.Generator().manual_seed(args.seed))
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    opt = AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    schedule = OneCycle(args.lr, epochs * len(train))
    threads = torch.get_num_threads()
    print(f"{ds.name}: {len(ds.train.x)} train rows; {epochs} epoch(s), batch {batch}, "
          f"{threads} threads, torch {torch.__version__}")  # fmt: skip
    step, start = 0, time.perf_counter()
    for epoch in range(epochs):
        total = 0.0
        for xb, yb in train:
            opt.lr = schedule(step)
            loss = loss_fn(model(xb), yb)
            dlogits, _ = loss_fn.backward()
            model.backward(dlogits, need_input_grad=False)
            opt.step()
            opt.zero_grad()
            total += loss.item()
            step += 1
        seconds = time.perf_counter() - start
        line = f"epoch {epoch + 1}: train loss {total / len(train):.4f}"
        line += f", valid accuracy {evaluate(model, ds.valid.x, ds.valid.y, mean, std):.4f}"
        if ds.test is not None:
            line += f", test accuracy {evaluate(model, ds.test.x, ds.test.y, mean, std):.4f}"
        print(f"{line}, {seconds:.0f} s training", flush=True)


if __name__ == "__main__":
    main()
