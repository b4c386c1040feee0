"""``handgrad bench``: handgrad against PyTorch eager, in one process, alternating, median.

Workloads (issue 6), synthetic MNIST-shaped data, the same seeds, initial weights, batch order
and precision (float32) on both sides:

- **W1** the lesson's full-batch forward + backward, 784-50-1, MSE, 50,000 rows, with and
  without the input's gradient; a third row times its matrix multiplications alone (the floor).
- **W2** one training epoch, 784-50-10, cross-entropy, SGD, batch 64, 50,000 rows: the readable
  Python loop, the compiled fast path (:mod:`handgrad.fast`), and the ``Learner`` with its
  progress and metrics callbacks.
- **W3** one training epoch, 784-256-128-10, cross-entropy, Adam, batch 256, 50,000 rows.
- **W4** one training epoch of the ``cnn`` recipe on 10,000 rows (when
  ``handgrad.nn.models`` has it).
- **W5** inference throughput (rows/s) of the W3 model at batch 1 and batch 1,024.

How each number is measured:

- **Time**: every variant of a workload (PyTorch first) is built from the same initial weights,
  run once to warm up, then the variants take turns, in a rotating order, for ``repeats``
  rounds; the table shows the median and the speed-up is ``median(torch) / median(handgrad)``.
  Wall time by default; ``--clock cpu`` takes the process's CPU time instead, which on a
  machine shared with other jobs is far steadier (with ``--threads 1``: with more threads it
  also counts the threads' spin-waiting).
  PyTorch's side is what a user writes: ``torch.nn`` modules, ``loss.backward()`` and
  ``torch.optim`` with its defaults (inference under ``torch.no_grad()``).
- **GFLOP/s**: the useful floating-point work of a run (matrix products and convolutions,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` on one step of the PyTorch side) over
  the median time, and that as a fraction of this machine's single-precision GEMM peak, which
  the bench measures itself (the best of several large ``torch.mm`` calls, at the start and at
  the end of the run).
- **Peak memory**: after all the timing, each variant runs once more in a fresh Python process
  (several side by side: resident memory does not depend on the neighbours; one thread, one
  malloc arena, so that per-thread heaps add no noise): data and model are built and one step
  warms the libraries up, freed heap memory is returned to the system (``malloc_trim``), the
  kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), the workload runs, and the
  peak is ``VmHWM - VmRSS`` before it: the extra resident memory the workload needed on top
  of its inputs (median of ``--memory-repeats`` processes; the target counts differences up
  to 128 KiB as equal). Linux only; elsewhere ``n/a``.
- **Correctness guard**: before timing, each handgrad variant and PyTorch take one step from the
  same weights on the same batch (dropout off: the two libraries cannot draw the same masks);
  the gradients, parameters (and loss, outputs or input gradient) must agree to
  ``max|a - b| <= 2e-4 * max|b|`` (for the updated parameters, all but their 0.1% largest
  differences: Adam's first step is about ``lr * sign(g)``, so where a gradient is within
  rounding of zero the libraries may step apart). Otherwise the row says ``WRONG``, no
  speed-up is printed for it, and the command exits with status 1.

On a GPU (``--device cuda``, or ``auto`` where PyTorch sees one), everything above runs on the
device: the data, both sides' models, optimizer states and the floor's buffers are created
there (random values drawn on the CPU from the same seeds, then copied, so both devices see the
same numbers), and every timed interval starts and ends with ``torch.cuda.synchronize()``, so a
time covers the kernels the run queued, not just their launch. Differences from the CPU run:

- the compiled fast path (:mod:`handgrad.fast`) is C++ for the CPU: its variants (``handgrad
  fast``, ``SGD fused``, ``FastLearner``) are skipped, with a note saying so;
- ``--clock cpu`` is refused (process CPU time does not see GPU work); ``--threads`` only
  affects the host side;
- both sides compute in true float32: TF32 is switched off for matrix products and cuDNN
  convolutions while the bench runs (PyTorch enables it for convolutions by default, which
  would give the PyTorch side fewer mantissa bits than handgrad's matrix products);
- the GEMM peak is the device's (a larger ``torch.mm``, synchronised);
- **peak memory** is the GPU memory the caching allocator had allocated at its highest during
  one run of each variant, over what was allocated just before it
  (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, ``empty_cache`` and a
  warm-up step), measured in this process, one variant after another: a process that has
  initialised CUDA must not fork, and host RSS says nothing about the device;
- the correctness guard compares the tensors on the CPU, in float64, outside any timing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import io
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from handgrad.errors import HandgradError
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.module import Module, Sequential

#: Peak-memory differences up to this many bytes count as equal: RSS moves in pages and
#: malloc's chunks, and two runs of the same workload differ by this much.
MEMORY_SLACK = 128 * 1024

#: ``max|a - b| <= GUARD_RTOL * max|b|`` for every tensor the guard compares.
GUARD_RTOL = 2e-4

# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class Config:
    """What to run. ``quick`` shrinks every workload (under a minute in all); ``rows`` overrides
    every workload's number of rows (tests use a few hundred)."""

    quick: bool = False
    rows: int | None = None
    repeats: int | None = None
    only: tuple[str, ...] = ()
    memory: bool = True
    memory_repeats: int = 1
    fast: bool = True
    threads: int | None = None
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (process CPU time: steadier when shared)
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda[:N]" (checked by the CLI with resolve_device)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def n(self, full: int, quick: int) -> int:
        """Rows for a workload: ``full`` by default, ``quick`` with ``--quick``, or ``rows``."""
        if self.rows is not None:
            return self.rows
        return quick if self.quick else full

    def rounds(self, full: int) -> int:
        if self.repeats is not None:
            return self.repeats
        return max(3, full // 2) if self.quick else full


# ------------------------------------------------------------------------------------ data


class Batches:
    """``(xb, yb)`` slices of ``x`` and ``y`` in order: the same batches for every variant."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y, bs = self.x, self.y, self.batch_size
        for i in range(0, len(x), bs):
            yield x[i : i + bs], y[i : i + bs]

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def first(self) -> Batches:
        return Batches(self.x[: self.batch_size], self.y[: self.batch_size], self.batch_size)


def make_data(
    rows: int, seed: int, *, regression: bool = False, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """MNIST-shaped rows: pixels uniform in [0, 1], labels 0..9 (floats for regression), drawn
    on the CPU (the same numbers on every device) and copied to ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 784, generator=g)  # (N, 784)
    y = torch.randint(0, 10, (rows,), generator=g)  # (N,)
    return x.to(device), (y.float() if regression else y).to(device)


# ----------------------------------------------------------------------- models, both sides
Init = list[tuple[Tensor, Tensor]]  # (weight (in, out), bias (out,)) per linear layer


def mlp_init(sizes: list[int], seed: int, device: torch.device | str = "cpu") -> Init:
    """Kaiming-initialised weights for a Linear-ReLU-...-Linear net of widths ``sizes``, drawn
    on the CPU and copied to ``device`` (the models built from them live there too)."""
    g = torch.Generator().manual_seed(seed + 1)
    layers = [
        Linear(a, b, generator=g, nonlinearity="relu" if i < len(sizes) - 2 else "linear")
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]
    return [
        (lin.weight.detach().to(device, copy=True), lin.bias.detach().to(device, copy=True))
        for lin in layers
    ]


def handgrad_mlp(init: Init) -> Sequential:
    layers: list[Module] = []
    for i, (w, b) in enumerate(init):
        lin = Linear(w.shape[0], w.shape[1]).to(w.device)  # then overwritten on the device
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers += [lin] if i == len(init) - 1 else [lin, ReLU()]
    return Sequential(*layers)


def torch_mlp(init: Init) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(init):
        lin = nn.Linear(w.shape[0], w.shape[1], device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w.t())  # torch stores (out, in)
            lin.bias.copy_(b)
        layers += [lin] if i == len(init) - 1 else [lin, nn.ReLU()]
    return nn.Sequential(*layers)


def torch_twin(model: Module) -> nn.Module:
    """The ``torch.nn`` network computing what a handgrad ``Sequential`` computes, with the
    same weights (``Linear`` transposed to PyTorch's (out, in)) and running statistics."""
    from handgrad.nn.layers import (
        BatchNorm2d,
        BatchNormReLU2d,
        Conv2d,
        Dropout,
        GlobalAvgPool,
        Identity,
        Reshape,
    )

    if not isinstance(model, Sequential):
        raise TypeError(f"torch_twin: expected a Sequential, got {type(model).__name__}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    out: list[nn.Module] = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            t: nn.Module = nn.Linear(
                layer.in_features, layer.out_features, layer.bias is not None, device=device
            )
            _copy(t, weight=layer.weight.t(), bias=layer.bias)
        elif isinstance(layer, Conv2d):
            g = layer.geometry
            t = nn.Conv2d(
                layer.in_channels, layer.out_channels, g.kernel, g.stride, g.padding,
                g.dilation, g.groups, bias=layer.bias is not None, device=device,
            )  # fmt: skip
            _copy(t, weight=layer.weight, bias=layer.bias)
        elif isinstance(layer, BatchNorm2d | BatchNormReLU2d):
            t = nn.BatchNorm2d(
                layer.num_features, layer.eps, layer.momentum, layer.affine, device=device
            )
            _copy(t, weight=layer.weight, bias=layer.bias)
            _copy(t, running_mean=layer.running_mean, running_var=layer.running_var)
            if isinstance(layer, BatchNormReLU2d):  # PyTorch's usual pair of modules
                t = nn.Sequential(t, nn.ReLU())
        elif isinstance(layer, Identity):  # a placeholder (see models.cnn): nothing to run
            continue
        elif isinstance(layer, ReLU):
            t = nn.ReLU()
        elif isinstance(layer, Reshape):
            t = nn.Unflatten(1, layer.shape)
        elif isinstance(layer, GlobalAvgPool):
            t = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif isinstance(layer, Dropout):
            t = nn.Dropout(layer.p)
        else:
            raise TypeError(f"torch_twin: no PyTorch equivalent known for {type(layer).__name__}")
        out.append(t)
    return nn.Sequential(*out).to(device)  # (parameter-free modules: nothing to move)


def _copy(module: nn.Module, **tensors: Tensor | None) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(module, name).copy_(value)


def handgrad_tensors(model: Module, *, grads: bool) -> dict[str, Tensor]:
    """Parameters (or their ``.g``) by name, in handgrad's layout."""
    out = {}
    for name, p in model.named_parameters():
        t = p.g if grads else p
        if t is not None:
            out[("grad:" if grads else "param:") + name] = t.detach().clone().as_subclass(Tensor)
    return out


def torch_tensors(model: nn.Module, names: list[str], *, grads: bool) -> dict[str, Tensor]:
    """Parameters (or ``.grad``) of a torch twin, named and laid out as handgrad's."""
    out = {}
    tps = [p for p in model.parameters()]
    for name, p in zip(names, tps, strict=True):
        t = p.grad if grads else p
        if t is not None:
            t = t.detach().clone()
            if name.endswith("weight") and t.ndim == 2 and isinstance(_owner(model, p), nn.Linear):
                t = t.t().contiguous()
            out[("grad:" if grads else "param:") + name] = t
    return out


def _owner(model: nn.Module, p: Tensor) -> nn.Module | None:
    for m in model.modules():
        if any(q is p for q in m.parameters(recurse=False)):
            return m
    return None


# ----------------------------------------------------------------------------------- jobs
class Job(Protocol):
    """One variant of a workload, built fresh: ``run`` is what is timed, ``probe`` (on a fresh
    job) takes one step and returns the tensors the guard compares."""

    def run(self) -> None: ...

    def probe(self) -> dict[str, Tensor]: ...


def _optimizer_kwargs(opt: str, lr: float) -> dict[str, Any]:
    return {"lr": lr, **({"weight_decay": 0.01} if opt == "adamw" else {})}


class TorchTrain:
    """PyTorch eager: ``torch.nn`` modules, ``loss.backward()``, ``torch.optim`` (defaults)."""

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        batches: Batches,
        names: list[str],
        opt: str,
        lr: float,
        smoothing: float = 0.0,
    ):
        self.model = make_model()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.batches, self.names = batches, names
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt]
        self.opt = cls(self.model.parameters(), **_optimizer_kwargs(opt, lr))

    def run(self) -> None:
        model, loss_fn, opt = self.model, self.loss_fn, self.opt
        for xb, yb in self.batches:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()

    def probe(self) -> dict[str, Tensor]:
        for m in self.model.modules():  # dropout masks cannot match across libraries
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        xb, yb = next(iter(self.batches))
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        out = torch_tensors(self.model, self.names, grads=True)
        self.opt.step()
        out |= torch_tensors(self.model, self.names, grads=False)
        return out | {"loss": loss.detach()}


class HandgradTrain:
    """handgrad, one of five paths: ``loop`` (the readable Python step a learner reads),
    ``fast`` (:class:`handgrad.fast.FastStep`, one compiled call per step), ``fast fused``
    (the same with plain SGD's update inside the compiled call), ``learner``
    (``Learner.fit`` with progress, metrics and recorder callbacks) or ``fast learner``
    (the same with :class:`handgrad.fast.learner.FastLearner`)."""

    def __init__(
        self,
        make_model: Callable[[], Module],
        batches: Batches,
        opt: str,
        lr: float,
        path: str,
        smoothing: float = 0.0,
    ):
        from handgrad.nn.layers.losses import CrossEntropyLoss
        from handgrad.optim.optimizers import OPTIMIZERS

        self.model = make_model()
        self.loss_fn = CrossEntropyLoss(smoothing)
        self.batches, self.path = batches, path
        self.opt = OPTIMIZERS[opt](self.model.parameters(), **_optimizer_kwargs(opt, lr))
        self._run_learner: Any = None
        self.fast = None
        if path.startswith("fast") and path != "fast learner":
            from handgrad.fast import FastStep

            # "fast fused": the optimizer is part of the compiled step (plain SGD only)
            fused_opt = self.opt if path == "fast fused" else None
            self.fast = FastStep(self.model, self.loss_fn, fused_opt)

    def run(self) -> None:
        if self.path.endswith("learner"):
            # One Learner per variant, as a training run has one: what is timed is an epoch
            # (its callbacks' per-epoch work included), not building the Learner.
            if self._run_learner is None:
                self._run_learner = self._learner(self.batches)
            self._run_learner.fit(1)
            return
        model, loss_fn, opt, fast = self.model, self.loss_fn, self.opt, self.fast
        if self.path == "fast fused":  # forward, backward and update in one call per batch
            for xb, yb in self.batches:
                fast(xb, yb)  # type: ignore[misc]
            return
        with torch.no_grad():
            for xb, yb in self.batches:
                if fast is not None:
                    fast(xb, yb)
                else:
                    loss_fn(model(xb), yb)
                    model.backward(loss_fn.backward()[0], need_input_grad=False)
                opt.step()
                opt.zero_grad()

    def _learner(self, batches: Batches, callbacks: tuple[Any, ...] = ()) -> Any:
        """The Learner with the callbacks a training run shows: a progress bar (rendered
        into memory), metrics (accuracy) and the recorder."""
        from handgrad.train.callbacks import Metrics, Progress, Recorder
        from handgrad.train.learner import Learner
        from handgrad.train.recipes import metric_for

        cls = Learner
        if self.path == "fast learner":
            from handgrad.fast.learner import FastLearner

            cls = FastLearner
        quiet = make_quiet_console()
        cbs = [Progress(quiet), Metrics(accuracy=metric_for("ce")), Recorder(), *callbacks]
        device = self.batches.x.device  # the Learner moves the model where it is told
        return cls(self.model, self.loss_fn, self.opt, batches, None, callbacks=cbs, device=device)

    def _grads_before_update(self, batches: Batches) -> dict[str, Tensor]:
        """The first batch's gradients from the compiled step without the update (a fused
        step writes none out); the weights stay as they were."""
        from handgrad.fast import FastStep

        xb, yb = next(iter(batches))
        FastStep(self.model, self.loss_fn)(xb, yb)
        grads = handgrad_tensors(self.model, grads=True)
        self.opt.zero_grad()
        return grads

    def probe(self) -> dict[str, Tensor]:
        from handgrad.nn.layers import Dropout

        for m in self.model.modules():  # dropout masks cannot match across libraries
            if isinstance(m, Dropout):
                m.p = 0.0
        first = self.batches.first()
        grads: dict[str, Tensor] = {}
        losses: list[Tensor] = []
        fused_learner = None
        if self.path == "fast learner":
            from handgrad.train.learner import Callback

            class Loss(Callback):
                def after_batch(self, learn: Any) -> None:
                    losses.append(learn.loss.detach().clone())

            fused_learner = self._learner(first, (Loss(),))
            if not fused_learner.fused:
                fused_learner = None
        if fused_learner is not None:
            # No gradient is ever written out: the guard checks the compiled code's gradients
            # and the weights after the fused Learner's first step from the same weights.
            grads = self._grads_before_update(first)
            fused_learner.fit(1)
        elif self.path.endswith("learner"):
            from handgrad.train.learner import Callback

            class Capture(Callback):
                def after_backward(self, learn: Any) -> None:
                    grads.update(handgrad_tensors(learn.model, grads=True))
                    losses.append(learn.loss.detach().clone())

            self._learner(first, (Capture(),)).fit(1)
        elif self.path == "fast fused":
            # Likewise: the gradients, then the fused step whose parameters the guard checks.
            grads = self._grads_before_update(first)
            losses.append(self.fast(*next(iter(first)))[1])  # type: ignore[misc]
        else:
            xb, yb = next(iter(first))
            with torch.no_grad():
                if self.fast is not None:
                    losses.append(self.fast(xb, yb)[1])
                else:
                    losses.append(self.loss_fn(self.model(xb), yb))
                    self.model.backward(self.loss_fn.backward()[0], need_input_grad=False)
                grads = handgrad_tensors(self.model, grads=True)
                self.opt.step()
                self.opt.zero_grad()
        return grads | handgrad_tensors(self.model, grads=False) | {"loss": losses[0]}


class TorchGrad:
    """W1, PyTorch: full-batch forward + ``loss.backward()`` (the input's gradient optional)."""

    def __init__(self, init: Init, x: Tensor, y: Tensor, names: list[str], input_grad: bool):
        self.model, self.names = torch_mlp(init), names
        self.x = x.detach().requires_grad_(input_grad)
        self.y, self.input_grad = y, input_grad

    def run(self) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        self.x.grad = None
        loss = nn.functional.mse_loss(self.model(self.x)[:, 0], self.y)
        loss.backward()
        return loss

    def probe(self) -> dict[str, Tensor]:
        loss = self.run()
        out = torch_tensors(self.model, self.names, grads=True) | {"loss": loss.detach()}
        return out | ({"input grad": self.x.grad} if self.input_grad else {})


class HandgradGrad:
    """W1, handgrad: ``model(x)``, ``MSELoss``, ``model.backward(dpred)`` by hand."""

    def __init__(self, init: Init, x: Tensor, y: Tensor, input_grad: bool, fast: bool = False):
        from handgrad.nn.layers.losses import MSELoss

        self.model, self.loss_fn = handgrad_mlp(init), MSELoss()
        self.x, self.y, self.input_grad = x, y, input_grad
        self.fast = None
        if fast:
            from handgrad.fast import FastStep

            self.fast = FastStep(self.model, self.loss_fn)

    def run(self) -> tuple[Tensor, Tensor | None]:
        self.model.zero_grad()
        if self.fast is not None:
            _, loss, dx = self.fast(self.x, self.y, input_grad=self.input_grad)
            return loss, dx
        loss = self.loss_fn(self.model(self.x), self.y)
        dx = self.model.backward(self.loss_fn.backward()[0], need_input_grad=self.input_grad)
        return loss, dx

    def probe(self) -> dict[str, Tensor]:
        loss, dx = self.run()
        out = handgrad_tensors(self.model, grads=True) | {"loss": loss}
        return out | ({"input grad": dx} if self.input_grad and dx is not None else {})


class GemmFloor:
    """The floor: a workload's matrix products alone, writing into preallocated outputs (no
    allocation, no page faults, nothing else). Per step and layer ``k`` (input ``a_k``, output
    gradient ``d_k``): the forward ``a_k @ W_k + b_k``, ``dW_k`` (as ``d_k^T @ a_k``, the faster
    of its two layouts) and, below the top layer or for the input gradient, ``d_k @ W_k^T``."""

    def __init__(self, init: Init, batches: Batches, input_grad: bool = False):
        self.init, self.batches, self.input_grad = init, batches, input_grad
        g = torch.Generator().manual_seed(0)
        n, dev = batches.batch_size, init[0][0].device
        self.outs = [torch.empty(n, w.shape[1], device=dev) for w, _ in init]  # forward outputs
        self.grads = [
            torch.randn(n, w.shape[1], generator=g).to(dev) for w, _ in init
        ]  # d_k (N, out_k), drawn on the CPU
        self.dws = [torch.empty(w.shape[1], w.shape[0], device=dev) for w, _ in init]  # dW_k^T
        self.dxs = [torch.empty(n, w.shape[0], device=dev) for w, _ in init]  # d_k @ W_k^T

    def run(self) -> None:
        init, outs, grads, dws, dxs = self.init, self.outs, self.grads, self.dws, self.dxs
        for xb, _ in self.batches:
            m = len(xb)
            acts = [xb]
            for k, (w, b) in enumerate(init):
                acts.append(torch.addmm(b, acts[k], w, out=outs[k][:m]))  # (m, out_k)
            for k in range(len(init) - 1, -1, -1):
                torch.mm(grads[k][:m].t(), acts[k], out=dws[k])  # dW_k^T (out_k, in_k)
                if k > 0 or self.input_grad:
                    torch.mm(grads[k][:m], init[k][0].t(), out=dxs[k][:m])  # (m, in_k)

    def probe(self) -> dict[str, Tensor]:
        return {}


class Infer:
    """Inference over ``x`` in batches of ``batch`` rows, without gradients: ``forward`` is a
    PyTorch model, a handgrad model, or the fast path's ``predict``."""

    def __init__(self, forward: Callable[[Tensor], Tensor], x: Tensor, batch: int):
        self.forward, self.x, self.batch = forward, x, batch

    def run(self) -> Tensor:
        forward, x, b = self.forward, self.x, self.batch
        with torch.no_grad():
            for i in range(0, len(x), b):
                out = forward(x[i : i + b])
        return out

    def probe(self) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"output": self.forward(self.x[: self.batch])}


def handgrad_infer(init: Init, x: Tensor, batch: int, fast: bool = False) -> Infer:
    model = handgrad_mlp(init).eval()
    if not fast:
        return Infer(model, x, batch)
    from handgrad.fast import FastStep

    return Infer(FastStep(model).predict, x, batch)


# ------------------------------------------------------------------------------ workloads
@dataclass
class Variant:
    """One row of the table. ``role``: ``torch`` (the reference), ``handgrad`` or ``floor``
    (a lower bound, not a competitor). ``baseline``: the label of the handgrad variant this one
    is compared with for an overhead target (the ``Learner`` against the bare loop)."""

    label: str
    make: Callable[[], Job]
    role: str = "handgrad"
    baseline: str | None = None


@dataclass
class Workload:
    key: str
    title: str
    rows: int
    repeats: int
    variants: list[Variant]
    batch: int = 0  # rows per step (what one probe processes); 0: all rows at once
    unit: str = "s"  # "s": time per run; "rows/s": throughput
    warmup: bool = True  # one untimed run per variant first (off for runs of many seconds)


def fast_available(cfg: Config) -> tuple[bool, str]:
    """Whether the compiled fast path can be used here (building it on first use)."""
    if not cfg.fast:
        return False, "fast path disabled (--no-fast)"
    if cfg.torch_device.type != "cpu":
        # not even probed: building the extension takes minutes and it could not run anyway
        return False, (
            f"not on {cfg.device}: handgrad.fast is a C++ extension for CPU tensors, so its "
            "variants (handgrad fast, SGD fused, FastLearner) are skipped"
        )
    try:
        from handgrad.fast import fast_path_status
    except ImportError as exc:  # pragma: no cover - the module ships with handgrad
        return False, f"handgrad.fast unavailable: {exc}"
    return fast_path_status()


def _have(*modules: str) -> str | None:
    """``None`` if every ``handgrad.<module>`` imports, else a reason naming the missing one."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(f"handgrad.{m}")
        except ImportError as exc:
            return f"needs handgrad.{m} ({exc})"
    return None


def build_workloads(cfg: Config) -> tuple[list[Workload], list[str]]:
    """The workloads selected by ``cfg`` and the reasons any were skipped."""
    skipped: list[str] = []
    fast_ok, fast_why = fast_available(cfg)
    if not fast_ok:
        skipped.append(f"fast path: {fast_why}")
    workloads: list[Workload] = []

    def want(key: str) -> bool:
        return not cfg.only or key in cfg.only

    if want("W1"):
        workloads += [_w1(cfg, input_grad, fast_ok) for input_grad in (True, False)]
    for key, sizes, opt, lr, batch in (
        ("W2", [784, 50, 10], "sgd", 0.1, 64),
        ("W3", [784, 256, 128, 10], "adam", 1e-3, 256),
    ):
        if want(key):
            missing = _have("losses", "optim")
            if missing:
                skipped.append(f"{key}: {missing}")
            else:
                workloads.append(_train(cfg, key, sizes, opt, lr, batch, fast_ok, skipped))
    if want("W4"):
        missing = _have("losses", "optim")
        try:
            from handgrad.nn.models import MODELS
        except ImportError:  # pragma: no cover
            MODELS = {}
        if missing or "cnn" not in MODELS:
            skipped.append(f"W4: {missing or 'needs the cnn model (handgrad.nn.models)'}")
        else:
            workloads.append(_w4(cfg))
    if want("W5"):
        workloads += [_w5(cfg, b, full, quick, fast_ok) for b, full, quick in W5_BATCHES]
    return workloads, skipped


#: W5: (batch, rows by default, rows with --quick).
W5_BATCHES = ((1, 2_000, 500), (1024, 50_176, 10_240))


def _w1(cfg: Config, input_grad: bool, fast_ok: bool) -> Workload:
    rows = cfg.n(50_000, 10_000)
    x, y = make_data(rows, cfg.seed, regression=True, device=cfg.device)
    init = mlp_init([784, 50, 1], cfg.seed, cfg.device)
    names = [n for n, _ in handgrad_mlp(init).named_parameters()]
    variants = [
        Variant("torch eager", lambda: TorchGrad(init, x, y, names, input_grad), role="torch"),
        Variant("handgrad", lambda: HandgradGrad(init, x, y, input_grad)),
    ]
    if fast_ok:
        variants.append(
            Variant("handgrad fast", lambda: HandgradGrad(init, x, y, input_grad, True))
        )
    whole = Batches(x, y, rows)
    variants.append(
        Variant("GEMMs alone", lambda: GemmFloor(init, whole, input_grad), role="floor")
    )
    tag = "with input grad" if input_grad else "no input grad"
    title = f"full batch fwd+bwd 784-50-1 MSE, {rows:,} rows, {tag}"
    return Workload("W1", title, rows, cfg.rounds(7), variants, batch=rows)


def _train(
    cfg: Config,
    key: str,
    sizes: list[int],
    opt: str,
    lr: float,
    batch: int,
    fast_ok: bool,
    skipped: list[str],
) -> Workload:
    rows = cfg.n(50_000, 10_000)
    x, y = make_data(rows, cfg.seed, device=cfg.device)
    b = Batches(x, y, batch)
    init = mlp_init(sizes, cfg.seed, cfg.device)
    names = [n for n, _ in handgrad_mlp(init).named_parameters()]
    variants = [
        Variant(
            "torch eager",
            lambda: TorchTrain(lambda: torch_mlp(init), b, names, opt, lr),
            role="torch",
        ),
        Variant("handgrad", lambda: HandgradTrain(lambda: handgrad_mlp(init), b, opt, lr, "loop")),
    ]
    if fast_ok:
        variants.append(
            Variant(
                "handgrad fast",
                lambda: HandgradTrain(lambda: handgrad_mlp(init), b, opt, lr, "fast"),
            )
        )
    if fast_ok and opt == "sgd":
        variants.append(
            Variant(
                "handgrad fast, SGD fused",
                lambda: HandgradTrain(lambda: handgrad_mlp(init), b, opt, lr, "fast fused"),
            )
        )
    if key == "W2":
        missing = _have("learner", "callbacks", "recipes")
        if missing:
            skipped.append(f"W2 Learner: {missing}")
        else:
            variants.append(
                Variant(
                    "Learner",
                    lambda: HandgradTrain(lambda: handgrad_mlp(init), b, opt, lr, "learner"),
                    baseline="handgrad",
                )
            )
            if fast_ok:
                variants.append(
                    Variant(
                        "FastLearner",
                        lambda: HandgradTrain(
                            lambda: handgrad_mlp(init), b, opt, lr, "fast learner"
                        ),
                        # with plain SGD it folds the update in, as the fused loop does
                        baseline="handgrad fast, SGD fused" if opt == "sgd" else "handgrad fast",
                    )
                )
    variants.append(Variant("GEMMs alone", lambda: GemmFloor(init, b), role="floor"))
    name = "SGD" if opt == "sgd" else "Adam"
    title = f"epoch {'-'.join(map(str, sizes))} CE {name}, batch {batch}, {rows:,} rows"
    return Workload(key, title, rows, cfg.rounds(5), variants, batch=batch)


#: W4: the cnn recipe's optimizer settings (AdamW, label smoothing 0.1; constant lr here).
W4_BATCH, W4_LR, W4_SMOOTHING = 128, 3e-3, 0.1


def _w4(cfg: Config) -> Workload:
    from handgrad.nn.models import build_model

    rows = cfg.n(10_000, 1_024)
    x, y = make_data(rows, cfg.seed, device=cfg.device)
    b = Batches(x, y, W4_BATCH)
    ref = build_model("cnn", generator=torch.Generator().manual_seed(cfg.seed + 1))
    ref.to(cfg.device)  # built on the CPU (its generator is a CPU one), then moved
    names = [n for n, _ in ref.named_parameters()]
    s = W4_SMOOTHING

    def hg() -> Module:
        return ref.copy()

    variants = [
        Variant(
            "torch eager",
            lambda: TorchTrain(lambda: torch_twin(ref), b, names, "adamw", W4_LR, s),
            role="torch",
        ),
        Variant("handgrad", lambda: HandgradTrain(hg, b, "adamw", W4_LR, "loop", s)),
    ]
    title = f"epoch cnn (5 conv+BN+ReLU) CE AdamW, batch {W4_BATCH}, {rows:,} rows"
    # An epoch of 10,000 rows is ~300 GFLOP (about a minute per side on a busy 2-core
    # machine): one round, no warm-up run (the guard's step has loaded every kernel).
    # Warmed up like the others: the first epoch of each side pays one-time costs (oneDNN
    # builds its convolution kernels on first use; the heap grows to the working set).
    return Workload("W4", title, rows, cfg.rounds(1), variants, batch=W4_BATCH)


def _w5(cfg: Config, batch: int, full: int, quick: int, fast_ok: bool) -> Workload:
    rows = cfg.n(full, quick)
    x, _ = make_data(rows, cfg.seed, device=cfg.device)
    init = mlp_init([784, 256, 128, 10], cfg.seed, cfg.device)
    variants = [
        Variant("torch eager", lambda: Infer(torch_mlp(init).eval(), x, batch), role="torch"),
        Variant("handgrad", lambda: handgrad_infer(init, x, batch)),
    ]
    if fast_ok:
        variants.append(Variant("handgrad fast", lambda: handgrad_infer(init, x, batch, fast=True)))
    title = f"inference 784-256-128-10, batch {batch:,}, {rows:,} rows"
    return Workload("W5", title, rows, cfg.rounds(7), variants, batch=batch, unit="rows/s")


# ------------------------------------------------------------------------------ measuring
@dataclass
class Guard:
    ok: bool
    error: float | None = None  # the worst max|a - b| / max|b| over the compared tensors
    detail: str = ""


@dataclass
class Row:
    label: str
    role: str
    times: list[float] = field(default_factory=list)
    median: float = math.nan
    speedup: float | None = None  # torch median / this median (None when refused)
    gflops: float | None = None
    peak_fraction: float | None = None
    peak_bytes: int | None = None
    guard: Guard | None = None
    baseline: str | None = None
    overhead: float | None = None  # this median / baseline's median - 1


@dataclass
class Result:
    key: str
    title: str
    unit: str
    rows: int
    flops: float
    results: list[Row]


#: Parameters after the step may differ beyond ``GUARD_RTOL`` in at most this fraction of
#: their elements: Adam's first step moves each weight by about ``lr * g / (|g| + eps)``, so
#: where a gradient is within float32 rounding of zero the two libraries legitimately step
#: differently. A wrong optimizer changes nearly every element; a wrong gradient is caught by
#: the gradients themselves, which are compared strictly.
GUARD_PARAM_FRACTION = 1e-3


def compare(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> Guard:
    """Every reference tensor must be present in ``ours`` and agree to ``GUARD_RTOL`` (relative
    to its largest element); updated parameters (``param:*``) may have a
    ``GUARD_PARAM_FRACTION`` of elements outside it."""
    if not ref:
        return Guard(True, None, "nothing to compare")
    worst, where = 0.0, ""
    for name, b in ref.items():
        a = ours.get(name)
        if a is None:
            return Guard(False, None, f"{name} missing")
        if a.shape != b.shape:
            return Guard(False, None, f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if not b.numel():
            continue
        # on the CPU in float64, whatever device the runs used (a GPU gives the same answer)
        a64 = a.detach().to("cpu", torch.float64).reshape(-1)
        b64 = b.detach().to("cpu", torch.float64).reshape(-1)
        scale = max(b64.abs().max().item(), 1e-12)
        diff = (a64 - b64).abs() / scale
        if not bool(torch.isfinite(a64).all()) or not bool(torch.isfinite(b64).all()):
            diff = torch.full_like(diff, math.inf)
        err = diff.max().item()
        skip = int(len(diff) * GUARD_PARAM_FRACTION)
        if name.startswith("param:") and math.isfinite(err) and skip:
            # the bulk: every element but the GUARD_PARAM_FRACTION largest differences
            k = len(diff) - skip
            err = diff.kthvalue(k).values.item()
        if err > worst or not where:
            worst, where = err, name
    ok = worst <= GUARD_RTOL
    return Guard(ok, worst, "" if ok else f"{where} differs by {worst:.1e} (relative)")


def probe_with_flops(job: Job) -> tuple[dict[str, Tensor], float]:
    """``job.probe()`` and the matrix-product and convolution FLOPs it did (forward and
    backward), counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = job.probe()
    return out, float(counter.get_total_flops())


def gemm_peak(n: int, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """This machine's (or GPU's) single-precision GEMM rate in FLOP/s: the best of ``repeats``
    (n, n) @ (n, n) products on ``device`` (after one untimed call), each synchronised."""
    sync = make_sync(torch.device(device))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)  # drawn on the CPU: (n, n)
    b = torch.randn(n, n, generator=g).to(device)  # (n, n)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def gemm_size(cfg: Config) -> int:
    """The GEMM peak's matrix size: a GPU needs a far larger product than the CPU to be busy
    for long enough to time (8192: about 20 ms at 60 TFLOP/s)."""
    if cfg.torch_device.type == "cuda":
        return 4096 if cfg.quick or cfg.rows else 8192
    return 1024 if cfg.quick or cfg.rows else 2048


def make_sync(device: torch.device) -> Callable[[], None]:
    """What brackets every timed interval: ``torch.cuda.synchronize`` on a GPU (a time must
    cover the kernels a run queued, not only their launch), nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_workload(
    w: Workload,
    progress: Callable[[str], None],
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Times of every variant's ``run``, ``w.repeats`` rounds in rotating order; ``sync``
    (see :func:`make_sync`) is called just before each start and each stop."""
    jobs = {v.label: v.make() for v in w.variants}
    for label, job in jobs.items():
        if w.warmup:  # on a GPU this also pays for cuBLAS/cuDNN handles and kernel loading
            progress(f"{w.key} warm-up: {label}")
            job.run()
    times: dict[str, list[float]] = {label: [] for label in jobs}
    labels = list(jobs)
    for r in range(w.repeats):
        progress(f"{w.key} round {r + 1}/{w.repeats}")
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:  # rotate: nobody always runs first
            gc.collect()
            sync()
            t0 = clock()
            jobs[label].run()
            sync()
            times[label].append(clock() - t0)
    return times


# ------------------------------------------------------------------------- peak memory (RSS)
def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()


def _measure_peak(job: Job) -> int:
    """Extra peak RSS (bytes) of ``job.run()`` over the resident memory just before it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    job.run()
    return max(0, _status_kb("VmHWM") - before) * 1024


def memory_child() -> None:
    """Entry point of the fresh process that measures one workload's variants (JSON in on
    stdin, ``{label: bytes}`` out on stdout).

    The process imports torch and builds the workload's data once, then forks one child per
    variant, so each variant is measured in a process of its own that starts from the same
    state, without paying for the imports again (two seconds a process, most of a ``--quick``
    run's memory phase when every variant had its own).
    """
    spec = json.loads(sys.stdin.read())
    cfg = Config(**{**spec["config"], "only": tuple(spec["config"]["only"])})
    # One thread (and, from the parent, one malloc arena): the peak is a property of the
    # tensors a workload allocates; per-thread arenas only add noise of several MiB. Set
    # before any tensor operation, so no OpenMP thread exists when this process forks.
    torch.set_num_threads(1)
    workloads, _ = build_workloads(cfg)
    w = next(w for w in workloads if w.title == spec["title"])
    peaks: dict[str, int] = {}
    for label in spec["labels"]:
        v = next(v for v in w.variants if v.label == label)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, leave without running any cleanup
            os.close(read)
            code = 1
            try:
                v.make().probe()  # load kernels and the fast path before the counter is reset
                os.write(write, str(_measure_peak(v.make())).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as f:
            answer = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not answer:
            raise RuntimeError(f"memory run of {w.key} {label} failed (status {status})")
        peaks[label] = int(answer)
    print(json.dumps(peaks))


def measure_memory(cfg: Config, w: Workload, variants: list[Variant]) -> dict[str, int] | None:
    """Median over ``cfg.memory_repeats`` fresh processes of each variant's extra peak RSS."""
    if not memory_supported():
        return None
    runs = [_memory_once(cfg, w, variants) for _ in range(cfg.memory_repeats)]
    return {v.label: int(statistics.median(r[v.label] for r in runs)) for v in variants}


def _memory_once(cfg: Config, w: Workload, variants: list[Variant]) -> dict[str, int]:
    spec = {
        "config": {**asdict(cfg), "only": [w.key]},
        "title": w.title,
        "labels": [v.label for v in variants],
    }
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["MALLOC_ARENA_MAX"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", "from handgrad.app.bench import memory_child; memory_child()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory runs of {w.key} failed: {proc.stderr[-2000:]}")
    return {k: int(b) for k, b in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


# ------------------------------------------------------------------------- peak memory (GPU)
class DeviceMemory(Protocol):
    """The allocator statistics :func:`device_peak` needs (:class:`CudaMemory` on a GPU)."""

    def synchronize(self) -> None: ...

    def empty_cache(self) -> None: ...

    def reset_peak(self) -> None: ...

    def allocated(self) -> int: ...

    def max_allocated(self) -> int: ...


class CudaMemory:
    """PyTorch's CUDA caching allocator: bytes handed out to tensors (not the cached pool)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def max_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def device_peak(make: Callable[[], Job], mem: DeviceMemory) -> int:
    """Extra peak device memory (bytes) of one ``run`` of a fresh job over what was allocated
    just before it (its data, model and whatever else lives in this process), the GPU's
    counterpart of :func:`_measure_peak`. A first fresh job takes one step so that library
    handles and workspaces exist (and stay allocated) before the peak counter is reset."""
    make().probe()
    job = make()
    gc.collect()
    mem.synchronize()
    mem.empty_cache()
    mem.reset_peak()
    before = mem.allocated()
    job.run()
    mem.synchronize()
    return max(0, mem.max_allocated() - before)


def measure_device_memory(variants: list[Variant], mem: DeviceMemory) -> dict[str, int]:
    """Each variant's :func:`device_peak`, one after another in this process (never forked:
    a process that has initialised CUDA cannot fork safely)."""
    return {v.label: device_peak(v.make, mem) for v in variants}


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[dict[str, bool]]:
    """On a GPU, switch TF32 off for matrix products and cuDNN convolutions while the bench
    runs (PyTorch allows it for convolutions by default): both sides compute in float32.
    Yields the flags in effect (recorded in the report); restores them afterwards."""
    if device.type != "cuda":
        yield {}
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    try:
        yield {"matmul_tf32": bool(matmul.allow_tf32), "cudnn_tf32": bool(cudnn.allow_tf32)}
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


CPU_MEMORY_METHOD = (
    "peak RSS over the pre-run RSS in a process of its own, forked from a fresh one-thread "
    "process that built the workload (VmHWM reset via /proc/self/clear_refs after a warm-up "
    "step and malloc_trim)"
)
GPU_MEMORY_METHOD = (
    "peak GPU memory allocated by PyTorch's CUDA caching allocator during one run "
    "(torch.cuda.max_memory_allocated) over what was allocated just before it, in this "
    "process, after a warm-up step, empty_cache and reset_peak_memory_stats"
)


# ------------------------------------------------------------------------------------ run
def run_bench(cfg: Config, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every selected workload; return everything the table and ``--json`` show."""
    device = cfg.torch_device
    if device.type == "cuda" and cfg.clock == "cpu":
        raise HandgradError(
            "--clock cpu: process CPU time does not count GPU work; use --clock wall (the "
            "default) with --device cuda"
        )
    with exact_float32(device) as precision:
        report = _run_bench(cfg, device, progress)
    report["machine"]["float32"] = precision
    return report


def _run_bench(
    cfg: Config, device: torch.device, progress: Callable[[str], None]
) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    sync = make_sync(device)
    progress(f"measuring the GEMM peak on {device}")
    peak = gemm_peak(gemm_size(cfg), device=device)
    progress("building workloads")
    workloads, skipped = build_workloads(cfg)
    results: list[Result] = []
    for w in workloads:
        ref_variant = next(v for v in w.variants if v.role == "torch")
        progress(f"{w.key}: checking every variant against PyTorch")
        ref, flops_step = probe_with_flops(ref_variant.make())
        flops = flops_step * w.rows / (w.batch or w.rows)
        rows: dict[str, Row] = {}
        for v in w.variants:
            row = Row(v.label, v.role, baseline=v.baseline)
            if v.role == "handgrad":
                row.guard = compare(v.make().probe(), ref)
            rows[v.label] = row
        clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
        times = time_workload(w, progress, clock, sync)
        for label, ts in times.items():
            rows[label].times = ts
            rows[label].median = statistics.median(ts)
        torch_median = rows[ref_variant.label].median
        for row in rows.values():
            if row.role != "torch" and (row.guard is None or row.guard.ok):
                row.speedup = torch_median / row.median
            if flops > 0:
                row.gflops = flops / row.median / 1e9
            if row.baseline and row.baseline in rows:
                row.overhead = row.median / rows[row.baseline].median - 1.0
        results.append(Result(w.key, w.title, w.unit, w.rows, flops, list(rows.values())))
    # The peak again at the end, the better of the two: a neighbour's burst during one
    # measurement would otherwise inflate every "of peak" figure.
    peak = max(peak, gemm_peak(gemm_size(cfg), device=device))
    for r in results:
        for row in r.results:
            if row.gflops is not None:
                row.peak_fraction = row.gflops * 1e9 / peak
    if cfg.memory:
        # After all the timing.
        jobs = [
            (w, r, [v for v in w.variants if v.role != "floor"])
            for w, r in zip(workloads, results, strict=True)
        ]
        n_variants = sum(len(vs) for _, _, vs in jobs)
        peaks: Iterator[dict[str, int] | None]
        if device.type == "cuda":
            progress(f"peak GPU memory: {n_variants} variants, one after another")
            mem = CudaMemory(device)
            peaks = (measure_device_memory(vs, mem) for _, _, vs in jobs)
        else:  # the fresh processes run side by side (memory is not time)
            progress(f"peak memory: {n_variants} variants, each in its own process")
            workers = max(1, min(4, os.cpu_count() or 1))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                peaks = iter(list(pool.map(lambda job: measure_memory(cfg, job[0], job[2]), jobs)))
        for (_, r, _), by_label in zip(jobs, peaks, strict=True):
            for row in r.results:
                if by_label is not None and row.label in by_label:
                    row.peak_bytes = by_label[row.label]
    gpu = device.type == "cuda"
    return {
        "machine": machine_info(peak, device),
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "skipped": skipped,
        "workloads": [asdict(r) for r in results],
        "targets": targets([asdict(r) for r in results], gpu=gpu),
        "guard_rtol": GUARD_RTOL,
        "memory_method": GPU_MEMORY_METHOD if gpu else CPU_MEMORY_METHOD,
    }


def machine_info(peak: float, device: torch.device | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    device = device or torch.device("cpu")
    gpu = None
    if device.type == "cuda":
        from handgrad.train.devices import describe

        gpu = torch.cuda.get_device_name(device)
    return {
        "device": describe(device) if device.type == "cuda" else "cpu",
        "gpu": gpu,  # the GPU's name, None on the CPU
        "cuda": torch.version.cuda if gpu else None,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": peak / 1e9,  # of the device the bench ran on
        "load_average": list(load),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------- targets
def targets(workloads: list[dict[str, Any]], *, gpu: bool = False) -> list[dict[str, Any]]:
    """Issue 6's targets, each with the measured value and whether it is met (on a GPU the
    memory targets compare allocated GPU memory)."""
    out: list[dict[str, Any]] = []

    def best(w: dict[str, Any]) -> dict[str, Any] | None:
        hg = [r for r in w["results"] if r["role"] == "handgrad" and r["speedup"] is not None]
        hg = [r for r in hg if not r["baseline"]]
        return max(hg, key=lambda r: r["speedup"], default=None)

    for w in workloads:
        b = best(w)
        goal = {"W1": 1.1, "W2": 2.5, "W3": 1.1, "W4": 1.2}.get(w["key"])
        if goal and b is not None:
            out.append(
                {
                    "target": f"{w['key']} ({w['title']}): >= {goal}x faster than torch eager"
                    + (" (a CPU target; here on the GPU)" if gpu else ""),
                    "value": f"{b['speedup']:.2f}x ({b['label']})",
                    "met": b["speedup"] >= goal,
                }
            )
        floor = next((r for r in w["results"] if r["role"] == "floor"), None)
        if floor and b is not None and w["key"] == "W1":
            ratio = b["median"] / floor["median"]
            out.append(
                {
                    "target": f"{w['key']} ({w['title']}): within 1.25x of its GEMMs alone",
                    "value": f"{ratio:.2f}x ({b['label']})",
                    "met": ratio <= 1.25,
                }
            )
        for r in w["results"]:
            if r["overhead"] is not None:
                out.append(
                    {
                        "target": f"{w['key']}: {r['label']} within 15% of '{r['baseline']}'",
                        "value": f"{100 * r['overhead']:+.1f}%",
                        "met": r["overhead"] <= 0.15,
                    }
                )
        ref = next(r for r in w["results"] if r["role"] == "torch")
        for r in w["results"]:
            if r["role"] == "handgrad" and r["peak_bytes"] is not None and ref["peak_bytes"]:
                excess = r["peak_bytes"] - ref["peak_bytes"]
                note = " (within the ~1 MiB resolution of RSS)" if 0 < excess <= 2**20 else ""
                what = "peak GPU memory" if gpu else "peak memory"
                if gpu:
                    note = ""  # the allocator's counts are exact (to its 512-byte blocks)
                out.append(
                    {
                        "target": f"{w['key']} ({w['title']}): {r['label']} {what} <= torch",
                        "value": f"{r['peak_bytes'] / 2**20:.1f} vs "
                        f"{ref['peak_bytes'] / 2**20:.1f} MiB{note}",
                        "met": excess <= MEMORY_SLACK,
                    }
                )
    return out


# ------------------------------------------------------------------------------- display
def make_quiet_console() -> Any:
    """A rich console that renders into memory: the Learner's progress output costs what it
    costs on a terminal, but does not interleave with the bench's table."""
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=100)


def render(report: dict[str, Any]) -> Any:
    """The rich table of a :func:`run_bench` report."""
    from rich.table import Table

    m = report["machine"]
    t = Table(
        title=f"handgrad vs PyTorch eager, same process, alternating, median; {_where(m)}, "
        f"{report['config']['clock']} clock, GEMM peak {m['gemm_peak_gflops']:.0f} GFLOP/s",
        title_justify="left",
    )
    for col, just in (
        ("workload", "left"),
        ("variant", "left"),
        ("median", "right"),
        ("vs torch", "right"),
        ("GFLOP/s", "right"),
        ("of peak", "right"),
        (_mem_column(m), "right"),
        ("check", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for w in report["workloads"]:
        for i, r in enumerate(w["results"]):
            t.add_row(
                f"{w['key']} {w['title']}" if i == 0 else "",
                r["label"],
                _fmt_time(r["median"], w),
                _fmt_speed(r),
                "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%",
                "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f} MiB",
                _fmt_guard(r),
                end_section=i == len(w["results"]) - 1,
            )
    return t


def to_markdown(report: dict[str, Any]) -> str:
    """The table of a :func:`run_bench` report as GitHub markdown, with the targets below."""
    m = report["machine"]
    load = ", ".join(f"{v:.2f}" for v in m["load_average"])
    lines = [
        f"{_where(m)}, {report['config']['clock']} clock, GEMM peak "
        f"{m['gemm_peak_gflops']:.0f} GFLOP/s; {m['date']}; load average at the "
        f"end {load}; {report['seconds']:.0f} s in all.",
        "",
        "| workload | variant | median | vs torch | GFLOP/s | of peak | "
        f"{_mem_column(m)} | check |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for w in report["workloads"]:
        for i, r in enumerate(w["results"]):
            cells = [
                f"{w['key']} {w['title']}" if i == 0 else "",
                r["label"],
                _fmt_time(r["median"], w),
                _fmt_speed(r).replace("[red]", "").replace("[/red]", ""),
                "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%",
                "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f} MiB",
                _fmt_guard(r).replace("[red]", "").replace("[/red]", ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for t in report["targets"]:
        lines.append(f"- {'met' if t['met'] else '**missed**'}: {t['target']}: {t['value']}")
    return "\n".join(lines) + "\n"


def _where(m: dict[str, Any]) -> str:
    """Where the bench ran, for a title: the GPU (with the host CPU) or the CPU."""
    if m.get("gpu"):
        return f"GPU {m['device']}, CUDA {m['cuda']}, host {m['cpu']}, torch {m['torch']}, " + (
            "TF32 ON" if any(m.get("float32", {}).values()) else "TF32 off (true float32)"
        )
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads"


def _mem_column(m: dict[str, Any]) -> str:
    return "peak GPU mem (allocated)" if m.get("gpu") else "peak mem"


def _fmt_time(median: float, w: dict[str, Any]) -> str:
    if w["unit"] == "rows/s":
        return f"{w['rows'] / median:,.0f} rows/s"
    return f"{median * 1e3:,.1f} ms"


def _fmt_speed(r: dict[str, Any]) -> str:
    if r["role"] == "torch":
        return "1.00x"
    if r["guard"] is not None and not r["guard"]["ok"]:
        return "[red]refused[/red]"
    s = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    if r["overhead"] is not None:
        s += f" ({100 * r['overhead']:+.0f}% vs {r['baseline']})"
    return s


def _fmt_guard(r: dict[str, Any]) -> str:
    g = r["guard"]
    if r["role"] == "torch":
        return "reference"
    if g is None:
        return "floor (not checked)"
    if g["ok"]:
        return f"ok ({g['error']:.0e})" if g["error"] is not None else "ok"
    return f"[red]WRONG[/red]: {g['detail']}"
