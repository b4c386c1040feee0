"""The ``torch.compile`` peer: PyTorch eager's own jobs with the forward pass and the loss
compiled by TorchInductor (``mode="default"``, static shapes: the last, shorter batch of an
epoch gets a graph of its own), and optionally the optimizer's step compiled too, as PyTorch's
recipe "Compiling the optimizer with torch.compile" writes it. The backward pass is the
compiled graph's (AOTAutograd); everything else is :class:`TorchTrain`'s / :class:`TorchGrad`'s.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch
from torch import Tensor

from handgrad.app.bench.jobs import Job, TorchGrad
from handgrad.app.bench.peers.spec import PeerSpec
from handgrad.app.bench.training import TorchTrain

#: Graphs per compiled function: every job compiles its own model (the guard's probe, the
#: timed job, each batch shape), and Dynamo's default of 8 would quietly fall back to eager.
RECOMPILE_LIMIT = 512

#: (label, compile the optimizer step too) per variant; W1 has no optimizer.
VARIANTS = (("torch.compile", False), ("torch.compile, optimizer too", True))


def status() -> tuple[bool, str]:
    """Whether TorchInductor can compile here: it writes C++ and needs a compiler."""
    if not torch._dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported on this Python/platform"
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return False, "torch.compile needs a C++ compiler (g++ or clang++) on the PATH"
    return True, ""


def prepare(threads: int | None) -> None:
    """Nothing to note: compiled code uses PyTorch's threads (``--threads``) as eager does."""


def subnormals() -> None:
    """Nothing to add: compiled code runs in PyTorch's threads, under the torch sides' line."""


def variants(spec: PeerSpec) -> list[tuple[str, Callable[[], Job]]]:
    """The labels and job factories for ``spec``'s workload."""
    if spec.kind == "grad":
        return [(VARIANTS[0][0], lambda: CompiledGrad(spec))]
    return [
        (label, lambda opt=opt: CompiledTrain(spec, compile_opt=opt)) for label, opt in VARIANTS
    ]


def _compile(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    return torch.compile(fn, dynamic=False)


class CompiledTrain(TorchTrain):
    """An epoch of PyTorch eager's job, its loss (forward included) compiled; with
    ``compile_opt`` the ``optimizer.step()`` too."""

    def __init__(self, spec: PeerSpec, *, compile_opt: bool) -> None:
        super().__init__(
            spec.make_torch, spec.batches, spec.names, spec.opt, spec.lr, spec.smoothing
        )
        model, loss_fn = self.model, self.loss_fn
        self.loss_of = _compile(lambda xb, yb: loss_fn(model(xb), yb))  # type: ignore[method-assign]
        if compile_opt:
            opt = self.opt

            def step() -> None:
                opt.step()

            self.step = _compile(step)  # type: ignore[method-assign,assignment]


class CompiledGrad(TorchGrad):
    """W1, PyTorch eager's full-batch gradient pass with its forward and loss compiled."""

    def __init__(self, spec: PeerSpec) -> None:
        assert spec.init is not None
        super().__init__(spec.init, spec.x, spec.y, spec.names, spec.input_grad)
        model = self.model
        self.loss_of = _compile(  # type: ignore[method-assign]
            lambda x, y: torch.nn.functional.mse_loss(model(x)[:, 0], y)
        )
