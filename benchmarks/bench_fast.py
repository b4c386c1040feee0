"""The fused fast path against the readable path, PyTorch eager and the GEMMs alone (issue 16).

One W3 epoch (784-256-128-10, cross-entropy, Adam lr 1e-3, batch 256, 50,000 rows of
``handgrad bench``'s data) per variant per round, the variants alternating inside each round,
each variant training its own model on from round to round (so the later rounds see Adam's
state as a long run does, subnormals included). Reports each variant's median seconds per
epoch, with subnormals as shipped (IEEE: kept) and flushed to zero on every side
(``torch.set_flush_denormal(True)``, which also covers the C++ loops: it sets the CPU's
FTZ/DAZ flags). ``--model mlp`` times the ``mlp`` recipe's shape instead (784-512-256-10,
AdamW, label smoothing 0.1, batch 128).

    .venv/bin/python benchmarks/bench_fast.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as TF

from handgrad.app.bench.data import Batches, make_data
from handgrad.fast import FastStep
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import Adam, AdamW


def shapes(model_name: str) -> tuple[list[int], int, str, float]:
    if model_name == "mlp":
        return [784, 512, 256, 10], 128, "adamw", 0.1
    return [784, 256, 128, 10], 256, "adam", 0.0


def handgrad_variant(sizes, opt_name, smoothing, fused: bool):
    model = build_model(
        "mlp", hidden=tuple(sizes[1:-1]), generator=torch.Generator().manual_seed(0)
    )
    loss_fn = CrossEntropyLoss(label_smoothing=smoothing)
    cls = AdamW if opt_name == "adamw" else Adam
    opt = cls(model.parameters(), lr=3e-3 if opt_name == "adamw" else 1e-3)
    if fused:
        step = FastStep(model, loss_fn, opt)
        assert step.fused, step.reason

        def epoch(data):
            for xb, yb in data:
                step(xb, yb)

        return epoch

    def epoch(data):
        for xb, yb in data:
            loss_fn(model(xb), yb)
            model.backward(loss_fn.backward()[0])
            opt.step()
            opt.zero_grad()

    return epoch


def eager_variant(sizes, opt_name, smoothing):
    torch.manual_seed(0)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    cls = torch.optim.AdamW if opt_name == "adamw" else torch.optim.Adam
    opt = cls(model.parameters(), lr=3e-3 if opt_name == "adamw" else 1e-3)

    def epoch(data):
        for xb, yb in data:
            loss = TF.cross_entropy(model(xb), yb, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def gemm_variant(sizes, bs):
    """The step's matrix products alone: per layer the forward, dW and (above the first
    layer) dX, into buffers kept between steps."""
    ws = [torch.randn(a, b) * 0.05 for a, b in itertools.pairwise(sizes)]

    def epoch(data):
        for xb, _ in data:
            hs = [xb]
            for w in ws:
                hs.append(hs[-1] @ w)
            d = hs[-1]
            for k in range(len(ws) - 1, -1, -1):
                torch.mm(hs[k].t(), d)
                if k > 0:
                    d = d @ ws[k].t()

    return epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--model", choices=("w3", "mlp"), default="w3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes, bs, opt_name, smoothing = shapes(args.model)
    x, y = make_data(args.rows, 0)
    data = Batches(x, y, bs)
    for ftz in (False, True):
        torch.set_flush_denormal(ftz)
        variants = {
            "eager": eager_variant(sizes, opt_name, smoothing),
            "handgrad readable": handgrad_variant(sizes, opt_name, smoothing, fused=False),
            "handgrad fused": handgrad_variant(sizes, opt_name, smoothing, fused=True),
            "GEMMs alone": gemm_variant(sizes, bs),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, epoch in variants.items():
                t0 = time.perf_counter()
                epoch(data)
                times[name].append(time.perf_counter() - t0)
        torch.set_flush_denormal(False)
        gemm = statistics.median(times["GEMMs alone"])
        fused = statistics.median(times["handgrad fused"])
        label = "FTZ on every side" if ftz else "as shipped (subnormals kept)"
        shape = "-".join(map(str, sizes))
        print(f"\n{args.model} {shape} {opt_name} bs{bs}, {args.rows:,} rows, ", end="")
        print(f"{args.threads} threads, {label}; median of {args.rounds}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(
                f"  {name:18s} {med:7.3f} s  (min {min(ts):.3f})  "
                f"fused is {med / fused:4.2f}x faster; {med / gemm:4.2f}x the GEMMs"
            )


if __name__ == "__main__":
    main()
