"""What the DataLoader costs per epoch, next to one training epoch of the lesson's MLP.

    python benchmarks/bench_dataloader.py                 # 50,000 x 784 rows, batch 64
    python benchmarks/bench_dataloader.py --repeats 9 --threads 1 --no-torch

Measured in one process, alternating, median of ``--repeats`` rounds:

- handgrad's loader, shuffled: one gather of the whole epoch into a buffer the loader reuses,
  then views (the default; the gather is the compiled row copy of ``handgrad.data.rowcopy``
  where it builds), the same with ``torch.index_select`` for the gather (``compiled=False``),
  and one ``index_select`` per batch (``gather="batch"``);
- the same loader in sequential order (views, the floor);
- PyTorch's ``DataLoader`` over a ``TensorDataset`` (per-item indexing and collate), shuffled;
- one training epoch of the lesson's 784-50-10 MLP (handgrad ``Linear``, ``ReLU``,
  ``CrossEntropyLoss`` and ``SGD``), fed from batches prepared beforehand, so that it holds the
  model's work only;
- the same epoch fed by the loader (end to end);
- the same epoch fed one cache-resident batch over and over (no data read from memory).

Two figures, both against the model-only epoch. The loader *on its own* counts reading every
row from main memory (157 MB an epoch). An epoch without any loader pays that read too, inside
its first matrix multiply (its ready batches are in main memory as well), and an epoch fed by
the loader does not pay it twice: the gathered batch is still in cache when the model reads it.
So the loader's *cost to an epoch* is the end-to-end difference, epoch fed by the loader minus
epoch with batches ready, and that is the figure the target (under 5%) is checked against;
the last case shows how much of the on-its-own time is that memory read.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from rich.table import Table
from torch import Tensor

from handgrad.app.ui import make_console
from handgrad.data import DataLoader, rowcopy
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.module import Module, Sequential
from handgrad.optim.optimizers import SGD


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


def timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip torch's DataLoader")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every round's times")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (less disturbed by other jobs on a shared machine)",
    )
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.rows, 784, generator=g)  # (N, 784) in [0, 1], MNIST-sized
    y = torch.randint(0, 10, (args.rows,), generator=g)  # (N,)
    bs = args.batch_size
    mean, std = float(x.mean()), float(x.std())

    default_dl = DataLoader(x, y, bs, shuffle=True, seed=1)
    by_index_select = DataLoader(x, y, bs, shuffle=True, seed=1, compiled=False)
    per_batch = DataLoader(x, y, bs, shuffle=True, seed=1, gather="batch")
    sequential = DataLoader(x, y, bs)
    normalized = DataLoader(x, y, bs, shuffle=True, seed=1, mean=mean, std=std)

    def normalize_each_batch() -> None:  # what "once at construction" saves
        for xb, _ in default_dl:
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

    start = [p.detach().clone() for p in model.parameters()]

    def reset() -> None:
        """Every training epoch starts from the same weights: an epoch's time must not depend
        on how far the earlier ones trained (fitting one batch drives the softmax into
        subnormal floats, which are many times slower)."""
        for p, p0 in zip(model.parameters(), start, strict=True):
            p.copy_(p0)

    def model_epoch() -> None:
        reset()
        for xb, yb in ready:
            train_step(model, loss_fn, opt, xb, yb)

    # lr = 0: the same work per step, but fitting one batch 782 times would drive the softmax
    # into subnormal floats, which are many times slower (3 s instead of 0.5 s an epoch).
    frozen = SGD(model.parameters(), lr=0.0)

    def cached_epoch() -> None:  # one batch, always in cache: the model without data traffic
        reset()
        xb, yb = ready[0]
        for _ in ready:
            train_step(model, loss_fn, frozen, xb, yb)

    def loader_epoch() -> None:
        reset()
        for xb, yb in default_dl:
            train_step(model, loss_fn, opt, xb, yb)

    def paired_epoch(loader: DataLoader) -> tuple[float, float, float]:
        """Batch by batch, in pairs: a step on a ready batch and the loader's next batch with
        a step on it, each timed, the order swapped from one pair to the next. Paired at the
        scale of one step, the two sides see the same machine state, which whole-epoch timings
        on a shared machine do not (they vary by 10-15% from round to round). Returns
        seconds: ready steps, gathers, fed steps."""
        reset()
        batches = iter(loader)

        def on_ready(xr: Tensor, yr: Tensor) -> float:
            t0 = clock()
            train_step(model, loss_fn, opt, xr, yr)
            return clock() - t0

        def on_loader() -> tuple[float, float]:  # (its next batch, the step on it)
            t0 = clock()
            xb, yb = next(batches)
            t1 = clock()
            train_step(model, loss_fn, opt, xb, yb)
            return t1 - t0, clock() - t1

        ready_s = gather_s = fed_s = 0.0
        for i, (xr, yr) in enumerate(ready):
            if i % 2:  # every other pair the loader goes first: no side always follows the other
                (gather, fed), mine = on_loader(), on_ready(xr, yr)
            else:
                mine, (gather, fed) = on_ready(xr, yr), on_loader()
            ready_s, gather_s, fed_s = ready_s + mine, gather_s + gather, fed_s + fed
        return ready_s, gather_s, fed_s

    cases: dict[str, Callable[[], object]] = {
        "loader: shuffled, one gather per epoch (default)": lambda: consume(default_dl),
        "loader: shuffled, epoch gathered by index_select": lambda: consume(by_index_select),
        "loader: shuffled, index_select per batch": lambda: consume(per_batch),
        "loader: sequential (views)": lambda: consume(sequential),
        "the same gathers from a 1,000-row source (in cache)": gather_from_cache,
        "loader: shuffled + normalized once (at build)": lambda: consume(normalized),
        "loader: shuffled + normalizing each batch": normalize_each_batch,
        "train epoch, model only (batches ready)": model_epoch,
        "train epoch fed by the loader": loader_epoch,
        "train epoch, one cache-resident batch repeated": cached_epoch,
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
            times[name].append(timed(cases[name], clock))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    if args.verbose:
        for name, ts in times.items():
            print(f"{name[:40]:40s}", " ".join(f"{t * 1e3:6.1f}" for t in ts))
    model_name = "train epoch, model only (batches ready)"
    # Ratios are taken round by round (same load on the machine), then their median.
    share = {
        name: statistics.median(a / b for a, b in zip(ts, times[model_name], strict=True))
        for name, ts in times.items()
    }

    console = make_console()
    built, why = rowcopy.status()
    console.print(f"compiled row copy: {'in use' if built else 'unavailable: ' + why}")
    t = Table(
        title=f"{args.rows:,} x 784 rows, batch {bs} ({len(default_dl)} batches), median of "
        f"{args.repeats} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    t.add_column("per epoch")
    t.add_column("ms", justify="right")
    t.add_column("/ model-only training epoch", justify="right")
    for name, sec in median.items():
        t.add_row(name, f"{sec * 1e3:.1f}", f"{100 * share[name]:.1f}%")
    console.print(t)
    default = "loader: shuffled, one gather per epoch (default)"
    fed, cached = "train epoch fed by the loader", "train epoch, one cache-resident batch repeated"
    console.print(
        f"the loader on its own: {median[default] * 1e3:.1f} ms per epoch = "
        f"{100 * share[default]:.1f}% of the model-only epoch ({median[model_name] * 1e3:.0f} ms)"
        f"; fastest rounds {min(times[default]) * 1e3:.1f} vs {min(times[model_name]) * 1e3:.0f}"
        f" ms = {100 * min(times[default]) / min(times[model_name]):.1f}%"
    )
    console.print(
        f"reading the rows from memory inside the model-only epoch: "
        f"{100 * (1 - share[cached]):.1f}% of it (model-only vs one cache-resident batch)"
    )
    extra = share[fed] - 1.0
    console.print(
        f"whole epochs, end to end: fed by the loader {100 * extra:+.1f}% versus batches ready "
        "(whole epochs timed apart: see the paired figure below)"
    )
    for name, loader in (
        ("per batch", per_batch),
        ("per epoch by index_select", by_index_select),
        ("per epoch (default)", default_dl),
    ):
        paired_epoch(loader)  # warm-up
        rounds = [paired_epoch(loader) for _ in range(args.repeats)]
        ready_s = statistics.median(r[0] for r in rounds)
        gather_s = statistics.median(r[1] for r in rounds)
        fed_s = statistics.median(r[2] for r in rounds)
        cost = statistics.median((g + f - r) / r for r, g, f in rounds)
        console.print(
            f"paired, step by step, gathering {name} (median of {args.repeats} epochs): steps "
            f"on ready batches {ready_s * 1e3:.0f} ms; the loader's work {gather_s * 1e3:.1f} "
            f"ms ({100 * gather_s / ready_s:.1f}%); steps on its batches {fed_s * 1e3:.0f} ms "
            f"({100 * (fed_s / ready_s - 1):+.1f}%); cost to the epoch {100 * cost:+.1f}%"
        )
    verdict = "[green]met[/green]" if cost < 0.05 else "[red]missed[/red]"
    console.print(
        f"DataLoader cost to a training epoch of the 784-50-10 MLP: {100 * cost:+.1f}% "
        f"(its work + steps on its batches, versus steps on ready batches); target < 5%: "
        f"{verdict}"
    )


if __name__ == "__main__":
    main()
