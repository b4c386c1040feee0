"""What the DataLoader costs per epoch, next to one training epoch of the lesson's MLP.

    python benchmarks/bench_dataloader.py                 # 50,000 x 784 rows, batch 64
    python benchmarks/bench_dataloader.py --repeats 9 --threads 1 --no-torch

Measured in one process, alternating, median of ``--repeats`` rounds:

- handgrad's loader, shuffled, one ``index_select`` per batch (the default), and the
  alternative it was measured against: one gather of the whole epoch, then views;
- the same loader in sequential order (views, the floor);
- PyTorch's ``DataLoader`` over a ``TensorDataset`` (per-item indexing and collate), shuffled;
- one training epoch of the lesson's 784-50-10 MLP (handgrad ``Linear``, ``ReLU``,
  ``CrossEntropyLoss`` and ``SGD``), fed from batches prepared beforehand, so that it holds the
  model's work only;
- the same epoch fed by the loader (end to end).

The figure that matters: loader epoch / training epoch (target: under 5%).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from rich.table import Table
from torch import Tensor

from handgrad.data import DataLoader
from handgrad.layers import Linear, ReLU
from handgrad.losses import CrossEntropyLoss
from handgrad.module import Module, Sequential
from handgrad.optim import SGD
from handgrad.ui import make_console


def lesson_mlp(generator: torch.Generator) -> Sequential:
    return Sequential(
        Linear(784, 50, generator=generator),
        ReLU(),
        Linear(50, 10, nonlinearity="linear", generator=generator),
    )


def train_step(model: Module, loss_fn: CrossEntropyLoss, opt: SGD, xb: Tensor, yb: Tensor) -> None:
    """One SGD step on the mean softmax cross-entropy, every gradient by hand."""
    loss_fn(model(xb), yb)
    dlogits, _ = loss_fn.backward()  # (B, 10): (softmax - onehot) / B
    model.backward(dlogits, need_input_grad=False)
    opt.step()
    opt.zero_grad()


def consume(batches: Iterable[tuple[Tensor, Tensor]]) -> None:
    for _xb, _yb in batches:
        pass


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip torch's DataLoader")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.rows, 784, generator=g)  # (N, 784) in [0, 1], MNIST-sized
    y = torch.randint(0, 10, (args.rows,), generator=g)  # (N,)
    bs = args.batch_size
    mean, std = float(x.mean()), float(x.std())

    per_batch = DataLoader(x, y, bs, shuffle=True, seed=1)
    per_epoch = DataLoader(x, y, bs, shuffle=True, seed=1)
    per_epoch._gather_per_epoch = True
    sequential = DataLoader(x, y, bs)
    normalized = DataLoader(x, y, bs, shuffle=True, seed=1, mean=mean, std=std)

    def normalize_each_batch() -> None:  # what "once at construction" saves
        for xb, _ in per_batch:
            _ = (xb - mean) / std

    # The same gathers from a source small enough to stay in cache: what is left is the
    # per-batch work itself, so the difference is the cost of reaching rows in main memory.
    small = x[:1000].clone()
    small_rows = torch.randint(0, 1000, (args.rows,), generator=g)

    def gather_from_cache() -> None:
        for rows in small_rows.split(bs):
            small.index_select(0, rows)

    model = lesson_mlp(g)
    loss_fn, opt = CrossEntropyLoss(), SGD(model.parameters(), lr=0.1)
    # The model-only epoch: batches gathered beforehand, in a shuffled order.
    order = torch.randperm(args.rows, generator=g)
    ready = [(x[i], y[i]) for i in order.split(bs)]

    def model_epoch() -> None:
        for xb, yb in ready:
            train_step(model, loss_fn, opt, xb, yb)

    def loader_epoch() -> None:
        for xb, yb in per_batch:
            train_step(model, loss_fn, opt, xb, yb)

    cases: dict[str, Callable[[], object]] = {
        "loader: shuffled, index_select per batch (default)": lambda: consume(per_batch),
        "loader: shuffled, one gather per epoch": lambda: consume(per_epoch),
        "loader: sequential (views)": lambda: consume(sequential),
        "the same gathers from a 1,000-row source (in cache)": gather_from_cache,
        "loader: shuffled + normalized once (at build)": lambda: consume(normalized),
        "loader: shuffled + normalizing each batch": normalize_each_batch,
        "train epoch, model only (batches ready)": model_epoch,
        "train epoch fed by the loader": loader_epoch,
    }
    if not args.no_torch:
        from torch.utils.data import DataLoader as TorchLoader
        from torch.utils.data import TensorDataset

        torch_dl = TorchLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
        cases["torch.utils.data.DataLoader(TensorDataset), shuffled"] = lambda: consume(torch_dl)

    for fn in cases.values():  # warm-up: allocator, first-call costs
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.repeats):
        names = list(cases) if r % 2 == 0 else list(reversed(cases))  # alternate the order
        for name in names:
            times[name].append(timed(cases[name]))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    model_name = "train epoch, model only (batches ready)"
    # Ratios are taken round by round (same load on the machine), then their median.
    share = {
        name: statistics.median(a / b for a, b in zip(ts, times[model_name], strict=True))
        for name, ts in times.items()
    }

    console = make_console()
    t = Table(
        title=f"{args.rows:,} x 784 rows, batch {bs} ({len(per_batch)} batches), median of "
        f"{args.repeats} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    t.add_column("per epoch")
    t.add_column("ms", justify="right")
    t.add_column("/ model-only training epoch", justify="right")
    for name, sec in median.items():
        t.add_row(name, f"{sec * 1e3:.1f}", f"{100 * share[name]:.1f}%")
    console.print(t)
    default = "loader: shuffled, index_select per batch (default)"
    verdict = "[green]met[/green]" if share[default] < 0.05 else "[red]missed[/red]"
    console.print(
        f"DataLoader cost per epoch: {median[default] * 1e3:.1f} ms = {100 * share[default]:.1f}% "
        f"of a training epoch of the 784-50-10 MLP ({median[model_name] * 1e3:.0f} ms); "
        f"target < 5%: {verdict}"
    )
    best = min(times[default]) / min(times[model_name])
    console.print(
        f"fastest rounds (the least disturbed by other processes): {min(times[default]) * 1e3:.1f}"
        f" ms vs {min(times[model_name]) * 1e3:.0f} ms = {100 * best:.1f}%"
    )
    extra = share["train epoch fed by the loader"] - 1.0
    console.print(
        f"end to end: an epoch fed by the loader takes {100 * extra:+.1f}% versus batches "
        "prepared beforehand"
    )


if __name__ == "__main__":
    main()
