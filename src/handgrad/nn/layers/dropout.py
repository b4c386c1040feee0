"""``Dropout``: inverted dropout, off in evaluation."""

from __future__ import annotations

import torch
from torch import Tensor

from handgrad.nn import functional as F
from handgrad.nn.module import Module


class Dropout(Module):
    """In training, zero each value with probability ``p`` and scale the survivors by
    ``1 / (1 - p)`` (so nothing needs rescaling at evaluation); in evaluation, the identity.
    ``dx = dy * mask / (1 - p)``.

    The mask is drawn from ``generator`` if given, else from torch's global generator: after
    ``torch.manual_seed(s)`` the same masks come out again (and ``handgrad.gradcheck``, which
    re-seeds before each forward, sees one mask).

    Args:
        p: probability of dropping a value, in [0, 1] (default 0.5).
        generator: an optional private random generator. It advances with every call and
            nothing re-seeds it, so ``gradcheck`` (which replays masks by re-seeding the global
            generator) can only check a ``Dropout`` that uses the global one.
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        out, keep = F.dropout_forward(x, self.p, generator=self.generator)
        self.save_for_backward(keep)
        return out

    def bwd(self, out: Tensor, x: Tensor) -> None:
        (keep,) = self.saved
        x.g = F.dropout_backward(out.g, keep, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
