"""The lesson's workload, end to end: full-batch forward and backward of the 784-50-1 MSE net,
by hand and by autograd, gradients compared and both passes timed in the same run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from handgrad.interop.torch import to_torch
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.module import Sequential


@dataclass
class DemoResult:
    rows: int
    features: int
    hidden: int
    loss_kaiming: float
    loss_randn: float
    #: median seconds: {"forward": (handgrad, autograd), "backward": (handgrad, autograd)}
    times: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: max |hand - autograd| / max |autograd| per gradient
    grad_errors: dict[str, float] = field(default_factory=dict)


def lesson_net(features: int, hidden: int, init: str, generator: torch.Generator) -> Sequential:
    return Sequential(
        Linear(features, hidden, init=init, generator=generator),
        ReLU(),
        Linear(hidden, 1, init=init, nonlinearity="linear", generator=generator),
    )


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_lesson(
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    rows: int = 50_000,
    features: int = 784,
    hidden: int = 50,
    repeats: int = 5,
    seed: int = 0,
    input_grad: bool = True,
) -> DemoResult:
    """Run the workload on ``x`` (N, features) in [0, 1] and float targets ``y`` (N,); without
    them, on generated MNIST-shaped data (uniform pixels, digit labels 0-9)."""
    g = torch.Generator().manual_seed(seed)
    if x is None or y is None:
        x = torch.rand(rows, features, generator=g)
        y = torch.randint(0, 10, (rows,), generator=g).float()
    rows, features = x.shape
    loss_fn = MSELoss()
    randn_net = lesson_net(features, hidden, "randn", g).eval()
    loss_randn = loss_fn.eval()(randn_net(x), y).item()
    net = lesson_net(features, hidden, "kaiming", g)
    loss_fn.train()
    twin = to_torch(net)  # the same network as torch.nn modules, weights copied
    x_auto = x.clone().requires_grad_(input_grad)

    result = DemoResult(rows, features, hidden, 0.0, loss_randn)
    state: dict[str, Tensor] = {}

    def hg_forward() -> None:
        state["hg"] = loss_fn(net(x), y)

    def hg_backward() -> None:
        net.zero_grad()
        state["dx"] = net.backward(loss_fn.backward()[0], need_input_grad=input_grad)

    def torch_forward() -> None:
        state["pt"] = nn.functional.mse_loss(twin(x_auto)[:, 0], y)

    def torch_backward() -> None:
        twin.zero_grad()
        x_auto.grad = None
        state["pt"].backward()

    samples: dict[str, list[float]] = {k: [] for k in ("hf", "hb", "tf", "tb")}
    for i in range(repeats + 1):  # the first round warms up allocators and is not counted
        times = (
            _timed(hg_forward),
            _timed(hg_backward),
            _timed(torch_forward),
            _timed(torch_backward),
        )
        if i:
            for key, t in zip(samples, times, strict=True):
                samples[key].append(t)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result.times = {"forward": (med["hf"], med["tf"]), "backward": (med["hb"], med["tb"])}
    result.loss_kaiming = state["hg"].item()

    pairs = [
        ("layers.0.weight", net.layers[0].weight.g, twin[0].weight.grad.t()),
        ("layers.0.bias", net.layers[0].bias.g, twin[0].bias.grad),
        ("layers.2.weight", net.layers[2].weight.g, twin[2].weight.grad.t()),
        ("layers.2.bias", net.layers[2].bias.g, twin[2].bias.grad),
    ]
    if input_grad:
        pairs.append(("input", state["dx"], x_auto.grad))
    for name, ours, theirs in pairs:
        result.grad_errors[name] = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    return result
