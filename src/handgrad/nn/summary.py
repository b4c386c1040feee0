"""``summary(model, input_shape)``: a model's layers, the shape each one outputs, its
parameter count and the multiply-adds of one example's forward, found by running one zero
example through it (``model.summary(...)``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class Model(Protocol):
    """What the summary needs of a :class:`~handgrad.nn.module.Module` (``module.py`` calls
    this file, so this file does not import it)."""

    training: bool

    def __call__(self, *args: Any) -> Any: ...
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Any]]: ...
    def parameters(self) -> list[Tensor]: ...
    def register_forward_hook(self, hook: Callable[..., None]) -> Any: ...


@dataclass(frozen=True)
class Row:
    """One module: its dotted name (``""`` for the model), depth, type, output shape with the
    batch as ``N`` (``None`` when it did not run) and the parameters it holds, its children's
    included."""

    name: str
    depth: int
    kind: str
    shape: tuple[int | str, ...] | None
    params: int
    macs: int = 0  # multiply-adds of one example's forward, its children's included


@dataclass(frozen=True)
class Summary:
    """The rows in definition order; ``str()`` is the table ``print(model.summary(...))`` shows."""

    rows: list[Row]
    input_shape: tuple[int, ...]

    @property
    def total_params(self) -> int:
        return self.rows[0].params

    @property
    def total_macs(self) -> int:
        """Multiply-adds of one example's forward pass (FLOPs are about twice this)."""
        return self.rows[0].macs

    def __str__(self) -> str:
        table = [("layer", "output shape", "params")]
        for r in self.rows[1:]:
            shape = "-" if r.shape is None else _shape_text(r.shape)
            table.append(
                (
                    "  " * (r.depth - 1) + f"{r.name.rsplit('.', 1)[-1]} ({r.kind})",
                    shape,
                    f"{r.params:,}",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in table]
        rule = "-" * len(lines[0])
        model = self.rows[0]
        head = f"{model.kind}: input {_shape_text(('N', *self.input_shape))}"
        foot = f"{model.params:,} parameters, output {_shape_text(model.shape or ())}"
        work = f"{_millions(model.macs)} multiply-adds per example forward (FLOPs: twice that)"
        return "\n".join([head, rule, lines[0], rule, *lines[1:], rule, work, foot])


def summary(model: Model, input_shape: Sequence[int]) -> Summary:
    """Run a zero batch of one example of ``input_shape`` (without the batch dimension, e.g.
    ``(784,)`` or ``(1, 28, 28)``) through ``model`` in inference mode and tabulate it.

    Nothing of the model changes: training flags are put back and no forward context is kept.
    Raises ``ValueError`` when the model does not accept that shape.
    """
    shape = tuple(int(s) for s in input_shape)
    modules = list(model.named_modules())
    outputs: dict[int, Any] = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out: outputs.setdefault(id(mod), out))
        for _, m in modules
    ]
    flags = [(m, m.training) for _, m in modules]
    first = next(iter(model.parameters()), None)
    x = torch.zeros(
        (1, *shape),
        dtype=first.dtype if first is not None else torch.float32,
        device=first.device if first is not None else "cpu",
    )
    try:
        for m, _ in flags:
            m.training = False  # no forward context kept; dropout and batch norm as at inference
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"summary: {type(model).__name__} does not take inputs of shape "
            f"{_shape_text(('N', *shape))}: {exc}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    names = {name for name, _ in modules}
    own = {id(m): _product_macs(m, outputs.get(id(m))) for _, m in modules}
    rows = [
        Row(
            name,
            _depth(name, names),
            type(m).__name__,
            _batch_shape(outputs.get(id(m))),
            sum(p.numel() for p in m.parameters()),
            sum(own[id(sub)] for sub in m.modules()),
        )
        for name, m in modules
    ]
    return Summary(rows, shape)


def _product_macs(module: Any, out: Any) -> int:
    """Multiply-adds of one product layer (a ``Linear`` or ``Conv2d``: it has ``in_features``
    or ``in_channels`` and a weight of two or more axes) for its output ``out`` of one example:
    each output value is a dot product of ``weight.numel() / out_channels`` terms (``in`` for
    a linear layer, ``C/G * kh * kw`` for a convolution), whatever the weight's layout.
    Other layers (norms, activations, pooling) are counted as 0: their work is linear in the
    activations, small beside the products."""
    weight = getattr(module, "weight", None)
    if (
        not isinstance(out, Tensor)
        or out.dim() < 2
        or not isinstance(weight, Tensor)
        or weight.dim() < 2
        or not (hasattr(module, "in_features") or hasattr(module, "in_channels"))
    ):
        return 0
    return out.numel() * weight.numel() // out.shape[1]


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} million" if n >= 100_000 else f"{n:,}"


def _depth(name: str, names: set[str]) -> int:
    """How many modules contain this one (``layers.0`` of a Sequential is at depth 1: its
    ``layers`` is a list, not a module)."""
    if not name:
        return 0
    parts = name.split(".")
    return sum(".".join(parts[:i]) in names for i in range(len(parts)))


def _batch_shape(out: Any) -> tuple[int | str, ...] | None:
    if not isinstance(out, Tensor):
        return None
    return ("N", *out.shape[1:]) if out.dim() else ()


def _shape_text(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
