"""The kernel-level choices behind handgrad's hot paths, each against its alternative.

1. ReLU backward: ``dout * (y > 0)`` (a bool mask, then a float copy of it, then a product)
   against ``torch.where`` and ATen's one-pass ``threshold_backward`` (what handgrad uses).
2. The weight gradient of a linear layer: ``x^T @ dout`` (the (in, out) layout handgrad stores)
   against ``(dout^T @ x)^T`` copied back, at the shapes of W1, W2 and W3.
3. A large output in fresh memory (``dout @ W^T`` for W1's input gradient, 157 MB) against the
   same product into a buffer that is written again (no new pages to fault in).

Process CPU time, one thread, alternating, median of rounds: on a shared machine, wall time
mostly measures the neighbours.

    PYTHONPATH=src python benchmarks/bench_kernels.py --rounds 7
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch


def timed(cases: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median process-CPU microseconds per call of each case, cases alternating."""
    for f in cases.values():
        f()
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, f in cases.items():
            t0 = time.process_time()
            for _ in range(calls):
                f()
            out[k].append((time.process_time() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def show(title: str, res: dict[str, float]) -> None:
    base = next(iter(res.values()))
    print(f"\n{title}")
    for k, v in res.items():
        print(f"  {k:<34}{v:>12.1f} us  {base / v:>6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, process CPU time, median of {args.rounds}")
    tb = torch.ops.aten.threshold_backward
    for shape, calls in (((64, 50), 2000), ((256, 256), 300), ((50_000, 50), 5)):
        y = torch.randn(shape, generator=g).clamp_min(0)
        d = torch.randn(shape, generator=g)
        show(
            f"1. ReLU backward {shape}",
            timed(
                {
                    "dout * (y > 0)": lambda d=d, y=y: d * (y > 0),
                    "torch.where(y > 0, dout, 0)": lambda d=d, y=y: torch.where(y > 0, d, 0.0),
                    "threshold_backward (handgrad)": lambda d=d, y=y: tb(d, y, 0.0),
                },
                calls,
                args.rounds,
            ),
        )
    for n, i, o, calls in ((64, 784, 50, 2000), (256, 784, 256, 200), (50_000, 784, 50, 3)):
        x, d = torch.rand(n, i, generator=g), torch.randn(n, o, generator=g)
        show(
            f"2. dW of a linear layer, x ({n}, {i}), dout ({n}, {o})",
            timed(
                {
                    "x.t() @ dout": lambda x=x, d=d: x.t() @ d,
                    "(dout.t() @ x).t().contiguous()": lambda x=x, d=d: (
                        (d.t() @ x).t().contiguous()
                    ),
                },
                calls,
                args.rounds,
            ),
        )
    dh, w = torch.randn(50_000, 50, generator=g), torch.randn(784, 50, generator=g)
    buf = torch.empty(50_000, 784)

    def faults(f: Callable[[], object]) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    fresh, reuse = (lambda: dh @ w.t()), (lambda: torch.mm(dh, w.t(), out=buf))
    show(
        "3. W1's input gradient (50000, 784) = dh @ W^T",
        timed({"fresh memory": fresh, "written again into a buffer": reuse}, 3, args.rounds),
    )
    print(f"  page faults per call: fresh {faults(fresh):.0f}, buffer {faults(reuse):.0f}")


if __name__ == "__main__":
    main()
