"""What a gradient check found: one :class:`TensorCheck` per tensor, one :class:`CheckReport`
per layer, and the exit status they add up to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Exit statuses, as ``handgrad check`` returns them.
OK, WRONG, CANNOT_CHECK = 0, 1, 2


@dataclass
class TensorCheck:
    """One gradient's comparison, over every upstream gradient tried (the worst is kept).

    Errors are ``nan`` where that comparison was not made (autograd could not follow the
    forward, or the gradient was missing). ``excluded`` counts elements at a
    non-differentiable point, left out of both comparisons.
    """

    name: str
    shape: tuple[int, ...]
    autograd_abs: float = math.nan
    autograd_rel: float = math.nan
    numeric_abs: float = math.nan
    numeric_rel: float = math.nan
    checked_elements: int = 0
    excluded: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class CheckReport:
    """Everything ``gradcheck`` found. ``status`` is 0 when every gradient is right, 1 when
    one is wrong (or the backward raised or wrote into what it was given), 2 when the layer
    could not be checked (its forward raised or is not repeatable; nothing to check)."""

    module: str
    tensors: list[TensorCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forward_error: float | None = None
    loss: bool = False  # the output is a scalar: checked with dout = 1 first
    _status: int = field(default=OK, repr=False)

    def fail(self, problem: str, status: int = WRONG) -> None:
        self.problems.append(problem)
        self._status = max(self._status, status)

    @property
    def status(self) -> int:
        """The exit status: the worst of the layer-wide problems and the tensors' verdicts."""
        return max(self._status, WRONG if self.failures else OK)

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def failures(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.ok]

    def summary(self) -> str:
        """One line: OK with the tensors checked, or what is wrong and with which tensor."""
        names = ", ".join(t.name for t in self.tensors)
        if self.ok:
            what = "OK as a loss" if self.loss else "OK"
            note = next((n for n in self.notes if "ignores out.g" in n), None)
            return f"{self.module}: {what} ({names})" + (f"; {note}" if note else "")
        wrong = [*self.problems, *(f"{t.name}: {t.problem}" for t in self.failures)]
        return f"{self.module}: FAIL: " + "; ".join(wrong)

    def __str__(self) -> str:
        head = (
            f"{'tensor':<24}{'shape':<18}{'autograd abs':>13}{'rel':>10}"
            f"{'numeric abs':>13}{'rel':>10}  ok"
        )
        lines = [self.module, head]
        for t in self.tensors:
            lines.append(
                f"{t.name:<24}{t.shape!s:<18}{t.autograd_abs:>13.2e}{t.autograd_rel:>10.1e}"
                f"{t.numeric_abs:>13.2e}{t.numeric_rel:>10.1e}  {'yes' if t.ok else 'NO'}"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)
