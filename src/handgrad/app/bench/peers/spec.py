"""What a peer is given for one workload: the bench's own data, batches, initial weights and
hyper-parameters, so that every column computes the same thing from the same start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from handgrad.app.bench.data import Batches
from handgrad.app.bench.models import Init
from handgrad.nn.module import Module


@dataclass(frozen=True)
class PeerSpec:
    """One workload, as a peer sees it.

    ``kind``: ``grad`` (W1: one full-batch forward + backward of an MLP, MSE), ``mlp`` (W2, W3:
    an epoch of an MLP, cross-entropy) or ``cnn`` (W4: an epoch of the ``cnn`` recipe).
    ``make_torch`` builds the ``torch.nn`` twin with the bench's initial weights; ``init``
    (MLPs) or ``model`` (the cnn, a handgrad module) gives them to peers outside PyTorch.
    ``names``: the parameters' names in handgrad's order and layout (what the guard compares).
    """

    key: str
    kind: str
    batches: Batches
    names: list[str]
    make_torch: Callable[[], nn.Module]
    init: Init | None = None
    model: Module | None = None
    opt: str = "sgd"
    lr: float = 0.0
    smoothing: float = 0.0
    input_grad: bool = False

    @property
    def x(self) -> Tensor:
        return self.batches.x

    @property
    def y(self) -> Tensor:
        return self.batches.y
