"""One variant of a workload, ready to time: the :class:`Job` protocol, W1's full-batch
gradient pass on each side, the GEMM floor (a lower bound), and W5's inference.
The training jobs (W2-W4) are in :mod:`handgrad.app.bench.training`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from handgrad.app.bench.data import Batches
from handgrad.app.bench.models import Init, handgrad_mlp, handgrad_tensors, torch_mlp, torch_tensors
from handgrad.fast import FastStep
from handgrad.nn.layers.losses import MSELoss


class Job(Protocol):
    """One variant of a workload, built fresh: ``run`` is what is timed, ``probe`` (on a fresh
    job) takes one step and returns the tensors the guard compares."""

    def run(self) -> None: ...

    def probe(self) -> dict[str, Tensor]: ...


class TorchGrad:
    """W1, PyTorch: full-batch forward + ``loss.backward()`` (the input's gradient optional)."""

    def __init__(self, init: Init, x: Tensor, y: Tensor, names: list[str], input_grad: bool):
        self.model, self.names = torch_mlp(init), names
        self.x = x.detach().requires_grad_(input_grad)
        self.y, self.input_grad = y, input_grad

    def loss_of(self, x: Tensor, y: Tensor) -> Tensor:
        """The forward pass and the loss (a peer compiles this)."""
        return nn.functional.mse_loss(self.model(x)[:, 0], y)

    def run(self) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        self.x.grad = None
        loss = self.loss_of(self.x, self.y)
        loss.backward()
        return loss

    def probe(self) -> dict[str, Tensor]:
        loss = self.run()
        out = torch_tensors(self.model, self.names, grads=True) | {"loss": loss.detach()}
        return out | ({"input grad": self.x.grad} if self.input_grad else {})


class HandgradGrad:
    """W1, handgrad: ``model(x)``, ``MSELoss``, ``model.backward(dpred)`` by hand (or the
    compiled :class:`~handgrad.fast.FastStep` with ``fast``)."""

    def __init__(self, init: Init, x: Tensor, y: Tensor, input_grad: bool, fast: bool = False):

        self.model, self.loss_fn = handgrad_mlp(init), MSELoss()
        self.x, self.y, self.input_grad = x, y, input_grad
        self.fast = None
        if fast:
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

    return Infer(FastStep(model).predict, x, batch)
