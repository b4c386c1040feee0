"""Learning-rate schedules: pure functions of the optimizer step, ``schedule(step) -> lr``.

A schedule holds no optimizer and no state, so resuming a run needs only the step number; the
training loop sets ``opt.lr = schedule(step)`` before step ``step`` (counting from 0). Steps
past ``total_steps`` keep the final value, so an extra step never crashes a run.

- :class:`OneCycle`: cosine warm-up from ``max_lr / div_factor`` to ``max_lr``, then cosine
  annealing down to ``max_lr / (div_factor * final_div_factor)`` (Smith's one-cycle policy,
  the learning-rate part of ``torch.optim.lr_scheduler.OneCycleLR``).
- :class:`CosineWarmup`: linear warm-up from 0 to ``lr``, then a half cosine down to 0.
- :class:`StepDecay`: ``lr`` times ``gamma`` every ``step_size`` steps (``StepLR``).
- :class:`Constant`: ``lr`` throughout.
"""

from __future__ import annotations

import math
from typing import Any

from handgrad.errors import HandgradError


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any, *, low: float = 0.0, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (open_low and value == low):
        raise ValueError(f"{name} must be {'>' if open_low else '>='} {low:g}, got {value!r}")
    return float(value)


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a schedule's step must be an integer >= 0, got {step!r}")
    return step


def _cos_anneal(start: float, end: float, pct: float) -> float:
    """From ``start`` at ``pct = 0`` to ``end`` at ``pct = 1`` along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class Schedule:
    """Base class: ``__call__(step) -> lr`` and a ``values(n)`` helper for plots."""

    total_steps: int | None = None

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def values(self, n: int | None = None) -> list[float]:
        """The learning rate at steps ``0 .. n-1`` (default: ``total_steps``)."""
        n = n if n is not None else self.total_steps
        if n is None:
            raise ValueError(f"{type(self).__name__}.values() needs n: it has no total_steps")
        return [self(s) for s in range(n)]


class OneCycle(Schedule):
    r"""The one-cycle policy: warm up, then anneal far below the start.

    .. code-block:: text

        initial = max_lr / div_factor,  final = initial / final_div_factor
        up = pct_start * total_steps - 1                     (step where the peak is reached)
        step <= up:  lr = cos_anneal(initial, max_lr, step / up)
        step >  up:  lr = cos_anneal(max_lr, final, (step - up) / (total_steps - 1 - up))
        cos_anneal(a, b, pct) = b + (a - b) / 2 * (1 + cos(pi * pct))

    This is ``torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos", three_phase=False)``
    without momentum cycling: ``OneCycle(...)(s)`` is its learning rate at step ``s``.

    Args:
        max_lr: the peak learning rate (> 0).
        total_steps: the number of optimizer steps in the run (>= 2).
        pct_start: fraction of the run spent warming up, in (0, 1).
        div_factor: ``initial = max_lr / div_factor`` (>= 1).
        final_div_factor: ``final = initial / final_div_factor`` (>= 1).
    """

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.max_lr = _number("max_lr", max_lr, open_low=True)
        self.total_steps = _positive_int("total_steps", total_steps, minimum=2)
        self.pct_start = _number("pct_start", pct_start, open_low=True)
        if self.pct_start >= 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        self.div_factor = _number("div_factor", div_factor, low=1.0)
        self.final_div_factor = _number("final_div_factor", final_div_factor, low=1.0)
        self.initial_lr = self.max_lr / self.div_factor
        self.final_lr = self.initial_lr / self.final_div_factor
        self.peak_step = self.pct_start * self.total_steps - 1.0  # torch's phase boundary
        self.last_step = float(self.total_steps - 1)

    def __call__(self, step: int) -> float:
        s = float(min(_check_step(step), self.total_steps - 1))
        if s <= self.peak_step:
            if self.peak_step == 0.0:  # a warm-up of one step: step 0 is the peak
                return self.max_lr
            return _cos_anneal(self.initial_lr, self.max_lr, s / self.peak_step)
        # pct_start < 1 puts peak_step below last_step, so the span is positive.
        pct = (s - self.peak_step) / (self.last_step - self.peak_step)
        return _cos_anneal(self.max_lr, self.final_lr, pct)

    def __repr__(self) -> str:
        return (
            f"OneCycle(max_lr={self.max_lr:g}, total_steps={self.total_steps}, "
            f"pct_start={self.pct_start:g}, div_factor={self.div_factor:g}, "
            f"final_div_factor={self.final_div_factor:g})"
        )


class CosineWarmup(Schedule):
    r"""Linear warm-up to ``lr``, then cosine decay to ``final_lr``.

    .. code-block:: text

        step < warmup_steps:  lr_t = lr * step / warmup_steps
        otherwise:            p = (step - warmup_steps) / (total_steps - warmup_steps)
                              lr_t = final_lr + (lr - final_lr) / 2 * (1 + cos(pi * p))

    The peak ``lr`` is reached at ``step == warmup_steps``; with ``warmup_steps=0`` the decay
    starts at once. (The shape of ``transformers.get_cosine_schedule_with_warmup``.)

    Args:
        lr: the peak learning rate (> 0).
        total_steps: steps in the run (> warmup_steps).
        warmup_steps: steps of linear warm-up (>= 0).
        final_lr: the value reached at ``total_steps`` (default 0).
    """

    def __init__(
        self, lr: float, total_steps: int, warmup_steps: int, *, final_lr: float = 0.0
    ) -> None:
        self.lr = _number("lr", lr, open_low=True)
        self.total_steps = _positive_int("total_steps", total_steps)
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps, minimum=0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be less than total_steps ({total_steps})"
            )
        self.final_lr = _number("final_lr", final_lr)
        if self.final_lr > self.lr:
            raise ValueError(f"final_lr ({final_lr}) must not exceed lr ({lr})")

    def __call__(self, step: int) -> float:
        s = min(_check_step(step), self.total_steps)
        if s < self.warmup_steps:
            return self.lr * s / self.warmup_steps
        progress = (s - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return _cos_anneal(self.lr, self.final_lr, progress)

    def __repr__(self) -> str:
        return (
            f"CosineWarmup(lr={self.lr:g}, total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, final_lr={self.final_lr:g})"
        )


class StepDecay(Schedule):
    """``lr_t = lr * gamma ** (step // step_size)`` (``torch.optim.lr_scheduler.StepLR``).

    Args:
        lr: the starting learning rate (> 0).
        step_size: steps between decays (>= 1).
        gamma: the factor applied at each decay, in (0, 1].
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = _number("lr", lr, open_low=True)
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _number("gamma", gamma, open_low=True)
        if self.gamma > 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (_check_step(step) // self.step_size)

    def __repr__(self) -> str:
        return f"StepDecay(lr={self.lr:g}, step_size={self.step_size}, gamma={self.gamma:g})"


class Constant(Schedule):
    """``lr_t = lr`` at every step."""

    def __init__(self, lr: float) -> None:
        self.lr = _number("lr", lr, open_low=True)

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.lr

    def __repr__(self) -> str:
        return f"Constant(lr={self.lr:g})"


SCHEDULES = ("onecycle", "cosine", "step", "constant")


def make_schedule(name: str, lr: float, total_steps: int) -> Schedule:
    """The CLI's ``--schedule NAME`` with the peak (or starting) learning rate ``lr``.

    - ``onecycle``: ``OneCycle(lr, total_steps)`` (25% warm-up, defaults as in fastai).
    - ``cosine``: ``CosineWarmup(lr, total_steps, warmup_steps=10% of the run)``.
    - ``step``: ``StepDecay(lr, step_size=total_steps // 3, gamma=0.1)``: two decays.
    - ``constant``: ``Constant(lr)``.

    Raises :class:`~handgrad.errors.HandgradError` (one line for the CLI) for an unknown name or
    a value the schedule cannot take.
    """
    key = name.lower().strip() if isinstance(name, str) else name
    try:
        if key == "onecycle":
            return OneCycle(lr, total_steps)
        if key == "cosine":
            return CosineWarmup(lr, total_steps, warmup_steps=total_steps // 10)
        if key == "step":
            return StepDecay(lr, step_size=max(1, total_steps // 3), gamma=0.1)
        if key == "constant":
            return Constant(lr)
    except ValueError as exc:
        raise HandgradError(f"--schedule {name}: {exc}") from None
    raise HandgradError(
        f"--schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}"
    )


__all__ = [
    "SCHEDULES",
    "Constant",
    "CosineWarmup",
    "OneCycle",
    "Schedule",
    "StepDecay",
    "make_schedule",
]
