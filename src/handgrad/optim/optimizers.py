"""Optimizers with hand-written update rules: SGD (momentum, Nesterov), Adam and AdamW.

Each optimizer reads the gradient a backward pass left in ``p.g`` and updates ``p`` in place.
A class holds the hyperparameters (checked when set) and the state; the arithmetic is one
function per rule in :mod:`handgrad.optim.rules`, which AdamW shares with Adam. The tests
check every optimizer against ``torch.optim`` step by step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor

from handgrad.optim import rules
from handgrad.optim.base import Optimizer, check_number


# ----------------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov momentum and L2 decay.

    The algorithm (``torch.optim.SGD`` with ``dampening=0``), for each parameter ``p`` with a
    gradient ``g = p.g``:

    .. code-block:: text

        if weight_decay != 0:   g = g + weight_decay * p
        if momentum != 0:
            b = momentum * b + g                               (b starts at 0: first b = g)
            if nesterov:        g = g + momentum * b           (look ahead along b)
            else:               g = b
        p = p - lr * g

    Args:
        params: the tensors to train (``model.parameters()``).
        lr: learning rate (>= 0).
        momentum: momentum factor in [0, 1) (default 0: plain SGD).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.

    Example:
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> ...; model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
    """

    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.momentum = check_number("momentum", momentum, high=1.0)
        self.weight_decay = check_number("weight_decay", weight_decay)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = nesterov
        super().__init__(params, lr)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _has_buffer(self, name: str) -> bool:
        return self.momentum != 0.0

    def _update(self, idx: list[int], params: list[Tensor], grads: list[Tensor]) -> None:
        bufs = self._buffers("momentum_buffer", idx) if self.momentum != 0.0 else []
        rules.sgd(
            params,
            grads,
            bufs,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )


# ---------------------------------------------------------------------------------- Adam
class Adam(Optimizer):
    r"""Adam: per-coordinate steps from running averages of the gradient and its square.

    The algorithm (``torch.optim.Adam``, ``amsgrad=False``), for each parameter ``p`` with a
    gradient ``g = p.g`` at its ``t``-th update (``t`` = 1, 2, ...):

    .. code-block:: text

        if decoupled (AdamW):    p = p * (1 - lr * weight_decay)
        elif weight_decay != 0:  g = g + weight_decay * p        (L2, through the moments)
        m = beta1 * m + (1 - beta1) * g                          (m, v start at 0)
        v = beta2 * v + (1 - beta2) * g^2
        m_hat = m / (1 - beta1^t)                                (bias corrections)
        v_hat = v / (1 - beta2^t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Args:
        params: the tensors to train (``model.parameters()``).
        lr: learning rate (>= 0), default 1e-3.
        betas: ``(beta1, beta2)``, each in [0, 1), default (0.9, 0.999).
        eps: added to the denominator (>= 0), default 1e-8.
        weight_decay: L2 penalty added to the gradient (>= 0), default 0.

    Example:
        >>> opt = Adam(model.parameters(), lr=3e-3)
    """

    state_names = ("exp_avg", "exp_avg_sq")
    decoupled: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        *,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (
            check_number("beta1 (betas[0])", betas[0], high=1.0),
            check_number("beta2 (betas[1])", betas[1], high=1.0),
        )
        self.eps = check_number("eps", eps)
        self.weight_decay = check_number("weight_decay", weight_decay)
        super().__init__(params, lr)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, idx: list[int], params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = self.betas
        rules.adam(
            params,
            grads,
            self._buffers("exp_avg", idx),
            self._buffers("exp_avg_sq", idx),
            [self.param_steps[i] for i in idx],
            lr=self.lr,
            beta1=beta1,
            beta2=beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled=self.decoupled,
        )


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter): the decay shrinks the weights
    directly, ``p = p * (1 - lr * weight_decay)``, instead of entering the gradient's moments.

    The algorithm is :class:`Adam`'s with the ``decoupled`` branch (``torch.optim.AdamW``):

    .. code-block:: text

        p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Args:
        params, lr, betas, eps: as for :class:`Adam`.
        weight_decay: decoupled decay coefficient (>= 0), default 1e-2.
    """

    decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        *,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer"]
