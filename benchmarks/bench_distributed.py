"""Data-parallel scaling on this machine: 1 process against 2 processes (gloo, 127.0.0.1).

Run: ``PYTHONPATH=src python benchmarks/bench_distributed.py [--batch 64 256 1024]
[--steps 60] [--rounds 5]``

The model is the MNIST MLP 784-256-128-10 (235,146 parameters, 0.94 MB of float32
gradients) with cross-entropy and SGD (momentum 0.9) on random MNIST-shaped data, each rank's
batches from ``handgrad.data.DataLoader(rank=, world_size=)`` (in order: views). For each
global batch size B, one round runs, alternating:

- ``1 proc x 1 thread``: one process, batch B, one BLAS thread (one core);
- ``1 proc x 2 threads``: one process, batch B, both cores (the fair baseline on 2 cores);
- ``2 procs x 1 thread``: :func:`handgrad.distributed.run` with 2 ranks, B/2 samples each, one
  thread each, gradients averaged by :class:`~handgrad.distributed.DataParallel` (1 bucket);
- ``torch DDP 2 procs``: the same network converted with ``handgrad.interop.torch.to_torch`` and
  trained by PyTorch autograd under ``DistributedDataParallel`` (gloo), for reference.

Per step each rank measures the compute (forward, backward, optimizer step) and the
``reduce_gradients`` call (the all-reduce, *including* waiting for the slower rank); the
table gives medians over steps, then the median over rounds. A separate measurement times
the all-reduce of the same 0.94 MB buffer back to back (no compute, after a barrier): the pure
communication cost, without the waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from handgrad.data import DataLoader
from handgrad.distributed import DataParallel, DistContext, run
from handgrad.interop.torch import to_torch
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import SGD

WARMUP = 5


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def rank_batches(ctx: DistContext, batch: int, steps: int) -> DataLoader:
    """This rank's ``steps + WARMUP`` batches of ``batch / W`` rows, sharded as in training."""
    local = batch // ctx.world_size
    x, y = make_data(local * (steps + WARMUP) * ctx.world_size)
    return DataLoader(x, y, local, rank=ctx.rank, world_size=ctx.world_size)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def gather(ctx: DistContext, values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (on every rank)."""
    t = torch.tensor(values, dtype=torch.float64)
    if not ctx.distributed:
        return [values]
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def handgrad_worker(ctx: DistContext, batch: int, steps: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    model = build_model("mlp", generator=torch.Generator().manual_seed(0))
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), 0.01, momentum=0.9)
    dp = DataParallel(model, ctx)
    compute, comm, total = [], [], []
    for i, (xb, yb) in enumerate(rank_batches(ctx, batch, steps)):
        t0 = time.perf_counter()
        loss_fn(model(xb), yb)
        model.backward(loss_fn.backward()[0], need_input_grad=False)
        t1 = time.perf_counter()
        dp.reduce_gradients()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        if i >= WARMUP:
            compute.append((t1 - t0) + (t3 - t2))
            comm.append(t2 - t1)
            total.append(t3 - t0)
    stats = [median_ms(compute), median_ms(comm), median_ms(total), float(dp.calls_per_step)]
    # The pure all-reduce: the same gradient-sized buffer, back to back, all ranks aligned.
    pure = []
    if ctx.distributed:
        flat = torch.zeros(sum(p.numel() for p in model.parameters()))
        ctx.barrier()
        for _ in range(30):
            t = time.perf_counter()
            ctx.all_reduce_(flat)
            pure.append(time.perf_counter() - t)
    stats.append(median_ms(pure) if pure else 0.0)
    everyone = gather(ctx, stats)
    ctx.on_main(Path(out).write_text, json.dumps(everyone))


def ddp_worker(ctx: DistContext, batch: int, steps: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    net = to_torch(build_model("mlp", generator=torch.Generator().manual_seed(0)))
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    total = []
    for i, (xb, yb) in enumerate(rank_batches(ctx, batch, steps)):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        if i >= WARMUP:
            total.append(time.perf_counter() - t0)
    everyone = gather(ctx, [0.0, 0.0, median_ms(total), 0.0, 0.0])
    ctx.on_main(Path(out).write_text, json.dumps(everyone))


CONFIGS = [
    ("1 proc x 1 thread", handgrad_worker, 1, 1),
    ("1 proc x 2 threads", handgrad_worker, 1, 2),
    ("2 procs x 1 thread", handgrad_worker, 2, 1),
    ("torch DDP 2 procs x 1 thread", ddp_worker, 2, 1),
]


def measure(worker, nproc: int, threads: int, batch: int, steps: int) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stats.json")
        run(worker, nproc, batch, steps, threads, out, device="cpu", timeout_s=120)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads_before = torch.get_num_threads()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    header = (
        "| global batch | configuration | step (ms) | compute (ms) | all-reduce incl. wait "
        "(ms) | pure all-reduce (ms) | samples/s | vs 1 proc x 1 thread | vs 1 proc x 2 threads |"
    )
    print(header)
    print("|" + "---|" * 9)
    for batch in args.batch:
        results: dict[str, list[list[list[float]]]] = {name: [] for name, *_ in CONFIGS}
        for _ in range(args.rounds):
            for name, worker, nproc, threads in CONFIGS:
                results[name].append(measure(worker, nproc, threads, batch, args.steps))
        torch.set_num_threads(threads_before)
        rows = {}
        for name, *_ in CONFIGS:
            # Per round: the slowest rank's step (the step ends when every rank is done).
            rounds = results[name]
            step = statistics.median(max(r[2] for r in rnd) for rnd in rounds)
            compute = statistics.median(statistics.mean(r[0] for r in rnd) for rnd in rounds)
            comm = statistics.median(statistics.mean(r[1] for r in rnd) for rnd in rounds)
            pure = statistics.median(statistics.mean(r[4] for r in rnd) for rnd in rounds)
            rows[name] = (step, compute, comm, pure)
        one, two = rows["1 proc x 1 thread"][0], rows["1 proc x 2 threads"][0]
        for name, (step, compute, comm, pure) in rows.items():
            ddp = name.startswith("torch")
            print(
                f"| {batch} | {name} | {step:.2f} | {'-' if ddp else f'{compute:.2f}'} | "
                f"{'-' if ddp or not comm else f'{comm:.2f}'} | "
                f"{f'{pure:.2f}' if pure else '-'} | {batch / step * 1e3:,.0f} | "
                f"{one / step:.2f}x | {two / step:.2f}x |"
            )


if __name__ == "__main__":
    main()
