"""One training step of the ``cnn`` recipe (batch 128), handgrad fused vs separate batch norm
and ReLU vs ``torch.nn`` + autograd, in one process, alternating, median process-CPU time.

    PYTHONPATH=src python benchmarks/bench_cnnstep.py --steps 6 --repeats 5

``--threads`` defaults to 1 (the 2-core machine is shared: one thread gives stable ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from handgrad.interop.torch import to_torch
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Module


def handgrad_step(model: Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    for x, y in zip(xs, ys, strict=True):
        loss_fn(model(x), y)
        dlogits, _ = loss_fn.backward()
        model.backward(dlogits, need_input_grad=False)
        model.zero_grad()


def torch_step(model: torch.nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for x, y in zip(xs, ys, strict=True):
        loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xs = [torch.rand(128, 784) for _ in range(args.steps)]
    ys = [torch.randint(0, 10, (128,)) for _ in range(args.steps)]
    gen = torch.Generator
    fused = build_model("cnn", generator=gen().manual_seed(1))
    separate = build_model("cnn", generator=gen().manual_seed(1), fused=False)
    twin = to_torch(separate)
    runs: dict[str, Callable[[], None]] = {
        "torch eager": lambda: torch_step(twin, xs, ys),
        "handgrad separate": lambda: handgrad_step(separate, xs, ys),
        "handgrad fused": lambda: handgrad_step(fused, xs, ys),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():  # alternating
            t0 = time.process_time()
            run()
            times[name].append((time.process_time() - t0) / args.steps)
    ref = statistics.median(times["torch eager"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), forward+backward "
        f"(no optimizer) per batch of 128, median of {args.repeats} x {args.steps} steps"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<20}{med * 1e3:8.1f} ms   torch/this {ref / med:5.2f}x")


if __name__ == "__main__":
    main()
