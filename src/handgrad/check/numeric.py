"""Central finite differences of ``f = sum(out * dout)`` on one private copy of the layer, with
the two one-sided slopes that show a kink; and the tensors a forward reads from outside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from handgrad.check.subject import Copy


@dataclass
class Numeric:
    """Finite differences of one tensor: the sampled flat indices and, per direction, the
    central estimate and the two one-sided slopes at each."""

    idx: list[int]
    central: list[Tensor]
    plus: list[Tensor]
    minus: list[Tensor]


class Evaluator:
    """``f(t) = out(t)`` on one private copy, with any input or held tensor perturbed; the
    one-sided and central slopes of ``sum(out * dout)`` for each direction.

    ``forward(copy, args, stage)`` runs the layer (seeded, user errors reported) and
    ``forget(layer)`` drops what it kept for a backward that never comes.
    """

    def __init__(
        self,
        forward: Callable[[Copy, list[Any], str], Any],
        forget: Callable[[Any], None],
        c: Copy,
        args: list[Any],
        names: list[str],
        eps: float,
    ) -> None:
        self.forward, self.forget, self.c, self.args = forward, forget, c, args
        self.names, self.eps = names, eps
        self.base: Tensor | None = None
        self.douts: list[Tensor] = []
        self.read: list[Tensor] = []
        self._recorded = False

    def fix(self, base: Tensor, douts: list[Tensor]) -> None:
        """The unperturbed output and the upstream gradients the slopes are taken along."""
        self.base, self.douts = base, douts

    def tensor(self, name: str) -> Tensor:
        if name in self.c.tensors:
            return self.c.tensors[name]
        return self.args[self.names.index(name)]

    def __call__(self) -> Tensor:
        args = [a.clone() if isinstance(a, Tensor) else a for a in self.args]
        with torch.no_grad():
            if self._recorded:
                out = self.forward(self.c, args, "forward")
            else:  # the first call records what the forward reads from outside
                self._recorded = True
                known = {id(t) for t in (*args, *self.c.tensors.values())}
                with Reads(known) as reads:
                    out = self.forward(self.c, args, "forward")
                self.read = reads.outsiders()
        self.forget(self.c.layer)
        return out.detach()

    def estimate(self, name: str, idx: list[int]) -> Numeric:
        """The slopes at the flat indices ``idx`` of tensor ``name``, per direction."""
        num = Numeric(idx, [], [], [])
        columns = [self.slopes(name, i) for i in idx]
        for k in range(len(self.douts)):
            for j, into in enumerate((num.central, num.plus, num.minus)):
                into.append(torch.tensor([col[k][j] for col in columns], dtype=torch.float64))
        return num

    def slopes(self, name: str, i: int) -> list[tuple[float, float, float]]:
        """Per direction: (central, forward one-sided, backward one-sided) slope at element
        ``i`` (flat index) of tensor ``name``."""
        t = self.tensor(name).detach()
        where = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), t.shape))
        orig, eps = t[where].item(), self.eps
        t[where] = orig + eps
        up = self()
        t[where] = orig - eps
        down = self()
        t[where] = orig
        assert self.base is not None
        out = []
        for d in self.douts:
            fu, fd, f0 = (
                (up * d).sum().item(),
                (down * d).sum().item(),
                (self.base * d).sum().item(),
            )
            out.append(((fu - fd) / (2 * eps), (fu - f0) / eps, (f0 - fd) / eps))
        return out


class Reads(TorchFunctionMode):
    """Records the floating-point tensors that torch operations read and that were neither
    made by an earlier operation nor in ``known`` (the inputs and the layer's tensors)."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.made: set[int] = set()
        self.seen: dict[int, Tensor] = {}
        self._keep: list[Any] = []  # holds results alive so that their ids are not reused

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for a in tensors_in((args, kwargs)):
            if id(a) not in self.known and id(a) not in self.made and a.is_floating_point():
                self.seen.setdefault(id(a), a)
        result = func(*args, **kwargs)
        for r in tensors_in(result):
            self.made.add(id(r))
        self._keep.append(result)
        return result

    def outsiders(self) -> list[Tensor]:
        return [t for i, t in self.seen.items() if i not in self.made]


def tensors_in(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o)]
    return []


def same(a: Tensor, b: Tensor) -> bool:
    """Equal up to the round-off of a reordered sum (some GPU kernels are not deterministic)."""
    if a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-300)
    return bool(((a - b).abs().max() <= 1e-12 * scale).item())
