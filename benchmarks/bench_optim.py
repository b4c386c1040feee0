"""Optimizer step and cross-entropy timings: handgrad against torch in the same process.

Run: ``PYTHONPATH=src python benchmarks/bench_optim.py [--repeats 7] [--iters 300]``

For each model shape (the W2 MLP 784-50-10 and the W3 MLP 784-256-128-10 of issue 6) and each
optimizer, one "round" times ``iters`` optimizer steps of handgrad and of ``torch.optim`` on
identical parameters and gradients, alternating the two; the table shows the median over
``repeats`` rounds. Cross-entropy is timed the same way: handgrad's forward + fused backward
against ``torch.nn.functional.cross_entropy`` + autograd, at batch 64 and 256.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn.functional as TF

from handgrad.nn.functional import cross_entropy_backward, cross_entropy_forward
from handgrad.nn.module import Parameter
from handgrad.optim.optimizers import SGD, Adam, AdamW

MODELS = {"784-50-10": [784, 50, 10], "784-256-128-10": [784, 256, 128, 10]}


def shapes(widths: list[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for a, b in pairwise(widths):
        out += [(a, b), (b,)]
    return out


def timer(fn: Callable[[], None], iters: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def compare(ours: Callable[[], None], theirs: Callable[[], None], iters: int, repeats: int):
    a, b = [], []
    for _ in range(repeats):
        a.append(timer(ours, iters))
        b.append(timer(theirs, iters))
    return statistics.median(a), statistics.median(b)


def optimizer_rows(iters: int, repeats: int) -> list[tuple[str, str, float, float]]:
    configs = [
        ("SGD", lambda p: SGD(p, lr=0.01), lambda p: torch.optim.SGD(p, lr=0.01)),
        (
            "SGD momentum 0.9",
            lambda p: SGD(p, lr=0.01, momentum=0.9),
            lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        ),
        ("Adam", lambda p: Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
        ("AdamW", lambda p: AdamW(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3)),
    ]
    rows = []
    for model, widths in MODELS.items():
        g = torch.Generator().manual_seed(0)
        data = [torch.randn(s, generator=g) * 0.01 for s in shapes(widths)]
        grads = [torch.randn(s, generator=g) * 0.01 for s in shapes(widths)]
        for name, make_ours, make_torch in configs:
            ours = [Parameter(d.clone()) for d in data]
            for p, gr in zip(ours, grads, strict=True):
                p.g = gr
            theirs = [d.clone().requires_grad_(True) for d in data]
            for p, gr in zip(theirs, grads, strict=True):
                p.grad = gr
            opt_a, opt_b = make_ours(ours), make_torch(theirs)
            t_a, t_b = compare(opt_a.step, opt_b.step, iters, repeats)
            rows.append((model, name, t_a, t_b))
    return rows


def cross_entropy_rows(iters: int, repeats: int) -> list[tuple[str, str, float, float]]:
    rows = []
    for n in (64, 256):
        x = torch.randn(n, 10)
        y = torch.randint(0, 10, (n,))
        one = torch.tensor(1.0)

        def ours(x=x, y=y, one=one) -> None:
            _, cache = cross_entropy_forward(x, y)
            cross_entropy_backward(one, cache)

        def theirs(x=x, y=y) -> None:
            xr = x.detach().requires_grad_(True)
            TF.cross_entropy(xr, y).backward()

        t_a, t_b = compare(ours, theirs, iters, repeats)
        rows.append((f"({n}, 10)", "cross-entropy fwd+bwd", t_a, t_b))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = optimizer_rows(args.iters, args.repeats) + cross_entropy_rows(args.iters, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| {'shape':<16} | {'what':<22} | handgrad (us) | torch (us) | speed-up |")
    print(f"|{'-' * 18}|{'-' * 24}|--------------:|-----------:|---------:|")
    for shape, name, a, b in rows:
        print(f"| {shape:<16} | {name:<22} | {a * 1e6:13.1f} | {b * 1e6:10.1f} | {b / a:7.2f}x |")


if __name__ == "__main__":
    main()
