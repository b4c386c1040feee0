"""Convolution forward+backward: handgrad (im2col, direct, auto) against torch.nn.Conv2d + autograd.

    PYTHONPATH=src python benchmarks/bench_conv.py                 # the cnn recipe's layers
    PYTHONPATH=src python benchmarks/bench_conv.py --batch 64 --clock cpu --threads 1 --json

For each convolution of the ``cnn`` recipe (and for the whole model's forward+backward), every
contender runs once per round, the rounds alternate, and the median over rounds is reported,
so a busy machine slows all contenders alike. Before timing, each contender's output and
gradients are compared with PyTorch's; a mismatch stops the benchmark instead of printing a
speedup. ``--clock cpu`` measures process CPU time (steadier than wall time on a shared
machine; with ``--threads 1`` it is the work done). The first layer's input is data, so no
input gradient is computed there, by either side.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from handgrad.nn.functional.conv import IM2COL_MAX_PATCH
from handgrad.nn.layers import Conv2d
from handgrad.nn.models import build_model
from handgrad.nn.module import Module, Sequential


def cnn_conv_shapes(batch: int) -> list[tuple[str, Conv2d, tuple[int, ...]]]:
    """(name, layer, input shape) of every convolution in the cnn recipe, at ``batch``."""
    model = build_model("cnn", generator=torch.Generator().manual_seed(0))
    x = torch.zeros(batch, 784)
    shapes = []

    def hook(m: Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(m, Conv2d):
            shapes.append((m, tuple(args[0].shape)))

    for layer in model.modules():
        layer.register_forward_hook(hook)
    model.eval()(x)
    out = []
    for i, (m, shape) in enumerate(shapes):
        g = m.geometry
        name = (
            f"conv{i + 1} {m.in_channels}->{m.out_channels} s{g.stride[0]} @{shape[2]}x{shape[3]}"
        )
        out.append((name, m, shape))
    return out


def torch_conv(m: Conv2d) -> nn.Conv2d:
    g = m.geometry
    ref = nn.Conv2d(
        m.in_channels, m.out_channels, g.kernel, g.stride, g.padding, g.dilation, g.groups,
        bias=m.bias is not None,
    )  # fmt: skip
    with torch.no_grad():
        ref.weight.copy_(m.weight)
        if m.bias is not None:
            ref.bias.copy_(m.bias)
    return ref


def torch_cnn(model: Sequential) -> nn.Sequential:
    """The same network in torch.nn with the same weights."""
    from handgrad.nn.layers import BatchNorm2d, Dropout, GlobalAvgPool, Linear, ReLU, Reshape

    layers: list[nn.Module] = []
    for m in model.layers:
        if isinstance(m, Reshape):
            layers.append(nn.Unflatten(1, m.shape))
        elif isinstance(m, Conv2d):
            layers.append(torch_conv(m))
        elif isinstance(m, BatchNorm2d):
            layers.append(nn.BatchNorm2d(m.num_features))
        elif isinstance(m, ReLU):
            layers.append(nn.ReLU())
        elif isinstance(m, GlobalAvgPool):
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif isinstance(m, Dropout):
            layers.append(nn.Identity())  # both sides run without dropout (same numbers)
        elif isinstance(m, Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            with torch.no_grad():
                lin.weight.copy_(m.weight.t())
                lin.bias.copy_(m.bias)
            layers.append(lin)
        else:
            raise TypeError(f"no torch twin for {m}")
    return nn.Sequential(*layers)


def timed(fns: dict[str, Callable[[], object]], rounds: int, clock: Callable[[], float]):
    """Median seconds per contender over ``rounds`` alternating rounds (after one warm-up)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            start = clock()
            f()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def check_close(name: str, ours: torch.Tensor | None, ref: torch.Tensor | None) -> None:
    if ours is None and ref is None:
        return
    if ours is None or ref is None:
        raise SystemExit(f"{name}: one side computed a gradient and the other did not")
    err = (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
    if err > 1e-4:
        raise SystemExit(f"{name}: differs from PyTorch by {err:.1e} (relative); no timing")


def bench_layers(batch: int, rounds: int, clock: Callable[[], float]) -> list[dict]:
    rows = []
    for name, m, shape in cnn_conv_shapes(batch):
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=gen)
        need_dx = shape[1] > 1  # the first layer's input is the data
        ref = torch_conv(m)
        xr = x.clone().requires_grad_(need_dx)
        dout = torch.randn_like(ref(xr), memory_format=torch.contiguous_format)

        def run_torch(ref=ref, xr=xr, dout=dout):
            ref.weight.grad = None
            xr.grad = None
            ref(xr).backward(dout)
            return xr.grad, ref.weight.grad

        contenders: dict[str, Callable[[], object]] = {"torch": run_torch}
        for method in ("im2col", "direct"):
            ours = Conv2d(m.in_channels, m.out_channels, m.geometry.kernel, m.geometry.stride,
                          m.geometry.padding, bias=m.bias is not None, method=method)  # fmt: skip
            ours.weight.data.copy_(m.weight)

            def run_ours(ours=ours, x=x, dout=dout, need_dx=need_dx):
                ours.zero_grad()
                ours(x)
                return ours.backward(dout, need_input_grad=need_dx), ours.weight.g

            dx_t, dw_t = run_torch()
            dx_o, dw_o = run_ours()
            check_close(f"{name} {method} dx", dx_o, dx_t)
            check_close(f"{name} {method} dW", dw_o, dw_t)
            contenders[method] = run_ours
        t = timed(contenders, rounds, clock)
        auto = "im2col" if m.weight[0].numel() <= IM2COL_MAX_PATCH else "direct"
        rows.append(
            {
                "layer": name,
                "torch_ms": t["torch"] * 1e3,
                "im2col_ms": t["im2col"] * 1e3,
                "direct_ms": t["direct"] * 1e3,
                "auto": auto,
                "speedup_auto": t["torch"] / t[auto],
            }
        )
    return rows


def bench_other_layers(batch: int, rounds: int, clock: Callable[[], float]) -> list[dict]:
    """BatchNorm2d and ReLU forward+backward at the cnn's activation shapes, against torch."""
    from handgrad.nn.layers import BatchNorm2d, ReLU

    rows = []
    for name, m, shape in cnn_conv_shapes(batch):
        geo = m.geometry
        ho, wo = geo.output_size(shape[2], shape[3])
        out_shape = (batch, m.out_channels, ho, wo)
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(out_shape, generator=gen)
        dout = torch.randn(out_shape, generator=gen)
        xr = x.clone().requires_grad_(True)
        ours_bn, torch_bn = BatchNorm2d(m.out_channels), nn.BatchNorm2d(m.out_channels)
        ours_relu = ReLU()

        def run(layer, x=x, dout=dout):
            layer(x)
            return layer.backward(dout)

        def run_torch(fn, xr=xr, dout=dout):
            xr.grad = None
            fn(xr).backward(dout)
            return xr.grad

        check_close(f"{name} BatchNorm2d dx", run(ours_bn), run_torch(torch_bn))
        check_close(f"{name} ReLU dx", run(ours_relu), run_torch(torch.relu))
        t = timed(
            {
                "bn": functools.partial(run, ours_bn),
                "torch_bn": functools.partial(run_torch, torch_bn),
                "relu": functools.partial(run, ours_relu),
                "torch_relu": functools.partial(run_torch, torch.relu),
            },
            rounds,
            clock,
        )
        shape_text = "x".join(map(str, out_shape))
        rows.append({"shape": shape_text, **{k: v * 1e3 for k, v in t.items()}})
    return rows


def bench_model(batch: int, rounds: int, clock: Callable[[], float]) -> dict:
    """The whole cnn's forward+backward (no optimizer step), both sides in eval-free train mode
    with dropout off (a Dropout draws different masks on the two sides)."""
    model = build_model("cnn", dropout=0.0, generator=torch.Generator().manual_seed(0))
    ref = torch_cnn(model)
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(2))
    dout = torch.randn(batch, 10, generator=torch.Generator().manual_seed(3))

    def run_torch():
        ref.zero_grad(set_to_none=True)
        ref(x).backward(dout)

    def run_ours():
        model.zero_grad()
        model(x)
        model.backward(dout, need_input_grad=False)

    run_torch()
    run_ours()
    first = next(iter(ref.parameters())).grad
    check_close("cnn model conv1 dW", model.parameters()[0].g, first)
    t = timed({"torch": run_torch, "handgrad": run_ours}, rounds, clock)
    return {
        "torch_ms": t["torch"] * 1e3,
        "handgrad_ms": t["handgrad"] * 1e3,
        "speedup": t["torch"] / t["handgrad"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rows = bench_layers(args.batch, args.rounds, clock)
    others = bench_other_layers(args.batch, args.rounds, clock)
    model = bench_model(args.batch, args.rounds, clock)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "clock": args.clock,
        "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(),
    }
    if args.json:
        out = {"info": info, "layers": rows, "other_layers": others, "model": model}
        print(json.dumps(out, indent=2))
        return
    print(f"batch {args.batch}, {info['threads']} threads, {args.clock} clock, median of "
          f"{args.rounds} alternating rounds, torch {torch.__version__}")  # fmt: skip
    print()
    print("| layer (fwd+bwd) | torch ms | im2col ms | direct ms | auto | torch / auto |")
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['torch_ms']:.2f} | {r['im2col_ms']:.2f} | {r['direct_ms']:.2f} "
            f"| {r['auto']} | {r['speedup_auto']:.2f}x |"
        )
    total = {k: sum(r[k] for r in rows) for k in ("torch_ms", "im2col_ms", "direct_ms")}
    auto_total = sum(r[f"{r['auto']}_ms"] for r in rows)
    print(
        f"| all convolutions | {total['torch_ms']:.2f} | {total['im2col_ms']:.2f} | "
        f"{total['direct_ms']:.2f} | {auto_total:.2f} | {total['torch_ms'] / auto_total:.2f}x |"
    )
    print()
    print(
        "| activation (fwd+bwd) | BatchNorm2d ms | torch ms | ratio | ReLU ms | torch ms | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in others:
        print(
            f"| {r['shape']} | {r['bn']:.2f} | {r['torch_bn']:.2f} | "
            f"{r['torch_bn'] / r['bn']:.2f}x | {r['relu']:.2f} | {r['torch_relu']:.2f} | "
            f"{r['torch_relu'] / r['relu']:.2f}x |"
        )
    print()
    print(
        f"whole cnn forward+backward (batch {args.batch}): torch {model['torch_ms']:.2f} ms, "
        f"handgrad {model['handgrad_ms']:.2f} ms, torch / handgrad {model['speedup']:.2f}x"
    )


if __name__ == "__main__":
    main()
