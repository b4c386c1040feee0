"""Batch norm + ReLU at the ``cnn`` recipe's five shapes (batch 128), forward and backward in
training mode: handgrad's fused functions against the separate batch norm and ReLU, and
against PyTorch's ``batch_norm`` + ``relu`` through autograd. One process, alternating,
median process-CPU time.

    PYTHONPATH=src python benchmarks/bench_bnrelu.py --repeats 15
    PYTHONPATH=src python benchmarks/bench_bnrelu.py --before /path/to/old/functional/norm.py

``--before`` also times the separate layers with another version of ``functional/norm.py``
(e.g. the main branch's), loaded from that file, for an A/B of the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as TF

from handgrad.nn import functional as F

#: (C, H, W) after each conv of the cnn recipe for 28x28 inputs.
SHAPES = ((16, 28, 28), (32, 14, 14), (64, 7, 7), (128, 4, 4), (128, 4, 4))


def separate(norm: ModuleType) -> Callable[..., None]:
    # What the layers run: the fused batch norm where the module has it (older trees named it
    # batchnorm_forward/backward).
    forward = getattr(norm, "fused_batchnorm_forward", norm.batchnorm_forward)
    backward = getattr(norm, "fused_batchnorm_backward", norm.batchnorm_backward)

    def step(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dy: torch.Tensor) -> None:
        h, cache = forward(x, gamma, beta, None, None, training=True)
        y, _ = F.relu_forward(h)
        backward(F.relu_backward(dy, y), cache)

    return step


def fused(norm: ModuleType) -> Callable[..., None]:
    def step(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dy: torch.Tensor) -> None:
        y, cache = norm.batchnorm_relu_forward(x, gamma, beta, None, None, training=True)
        norm.batchnorm_relu_backward(dy, y, cache)

    return step


def torch_autograd(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dy: torch.Tensor):
    x, gamma, beta = (t.detach().requires_grad_(True) for t in (x, gamma, beta))
    TF.relu(TF.batch_norm(x, None, None, gamma, beta, training=True)).backward(dy)


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("norm_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--before", help="another functional/norm.py to time as 'separate, before'")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = []
    for c, h, w in SHAPES:
        x = torch.randn(128, c, h, w) * 2 + 1
        data.append((x, torch.rand(c) + 0.5, torch.randn(c), torch.randn_like(x)))
    runs: dict[str, Callable[..., None]] = {"torch autograd": torch_autograd}
    if args.before:
        before = load(args.before)
        runs["separate, before"] = separate(before)
        if hasattr(before, "batchnorm_relu_forward"):
            runs["fused, before"] = fused(before)
    runs |= {"separate": separate(F.norm), "fused": fused(F.norm)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats + 1):
        for name, fn in runs.items():  # alternating
            t0 = time.process_time()
            for d in data:
                fn(*d)
            times[name].append(time.process_time() - t0)
    ref = statistics.median(times["torch autograd"][1:])
    print(
        f"torch {torch.__version__}, 1 thread, batch norm + ReLU forward+backward at the cnn's "
        f"five shapes (batch 128), median of {args.repeats}"
    )
    for name, ts in times.items():
        med = statistics.median(ts[1:])  # the first round warms up
        print(f"  {name:<18}{med * 1e3:8.2f} ms   torch/this {ref / med:5.2f}x")


if __name__ == "__main__":
    main()
