"""One training step (forward, backward, AdamW) of the ``resnet`` model (batch 128): handgrad
against ``torch.nn`` + autograd on the same weights (NCHW, torch's default, and channels-last,
as handgrad's recipe computes), then each of its convolution shapes (forward + backward) with
handgrad's two methods and PyTorch. One process, alternating rounds, medians of wall time.

    PYTHONPATH=src python benchmarks/bench_resnet_step.py --repeats 9

``--threads`` defaults to 1 (the 2-core machine is shared: one thread gives stable ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from handgrad.interop.torch import to_torch
from handgrad.nn.layers import Conv2d
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import AdamW

#: (in, out, kernel, stride, side) of every convolution of build_model("resnet")
SHAPES = [(1, 16, 3, 1, 28), (16, 16, 3, 1, 28), (16, 32, 3, 2, 28), (32, 32, 3, 1, 14),
          (16, 32, 1, 2, 28), (32, 64, 3, 2, 14), (64, 64, 3, 1, 7), (32, 64, 1, 2, 14),
          (64, 128, 3, 2, 7), (128, 128, 3, 1, 4), (64, 128, 1, 2, 7)]  # fmt: skip


def medians(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Milliseconds per call, median over ``repeats`` alternating rounds (one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats + 1):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    model = build_model("resnet", generator=torch.Generator().manual_seed(0))
    twin = to_torch(model).train().to(memory_format=torch.contiguous_format)  # torch's default
    twin_cl = to_torch(model).train().to(memory_format=torch.channels_last)
    loss, t_loss = (
        CrossEntropyLoss(label_smoothing=0.1),
        torch.nn.CrossEntropyLoss(label_smoothing=0.1),
    )

    # each side's AdamW step as in training (a small learning rate: the weights stay put)
    opt = AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)

    def handgrad_step() -> None:
        loss(model(x), y)
        model.backward(loss.backward()[0], need_input_grad=False)
        opt.step()
        model.zero_grad()

    def torch_step(net: torch.nn.Module) -> Callable[[], None]:
        t_opt = torch.optim.AdamW(net.parameters(), lr=1e-6, weight_decay=0.01)

        def step() -> None:
            t_loss(net(x), y).backward()
            t_opt.step()
            t_opt.zero_grad(set_to_none=True)

        return step

    step = medians(
        {"handgrad": handgrad_step, "torch": torch_step(twin), "torch_cl": torch_step(twin_cl)},
        args.repeats,
    )
    hg, tt, tc = step["handgrad"], step["torch"], step["torch_cl"]
    print(f"resnet step, batch 128, {args.threads} thread(s): handgrad {hg:.1f} ms, "
          f"torch {tt:.1f} ms (NCHW), torch {tc:.1f} ms (channels-last); handgrad/torch "
          f"{hg / tt:.2f}, {hg / tc:.2f}")  # fmt: skip
    print("conv (in, out, k, stride, side): forward+backward ms: im2col, direct, torch")
    for c, o, k, s, side in SHAPES:
        xb = torch.randn(128, c, side, side)
        runs: dict[str, Callable[[], None]] = {}
        for method in ("im2col", "direct"):
            conv = Conv2d(c, o, k, s, k // 2, bias=False, method=method)
            dy = torch.randn(conv(xb).shape)
            conv.clear_saved()
            runs[method] = lambda conv=conv, dy=dy, xb=xb: (conv(xb), conv.backward(dy))  # type: ignore[misc]
        tconv = torch.nn.Conv2d(c, o, k, s, k // 2, bias=False)
        xt = xb.clone().requires_grad_()
        runs["torch"] = lambda tconv=tconv, dy=dy, xt=xt: tconv(xt).backward(dy)  # type: ignore[misc]
        m = medians(runs, args.repeats)
        print(f"  {(c, o, k, s, side)}: {m['im2col']:.1f}, {m['direct']:.1f}, {m['torch']:.1f}")


if __name__ == "__main__":
    main()
