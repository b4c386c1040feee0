"""Helpers the tests share (imported as ``from support import ...``; ``tests/`` is on the
path, see ``pythonpath`` in pyproject.toml): the CLI run in-process, and the one gradient-check
helper every differentiable thing goes through, and tiny image data to train on."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from handgrad.app.cli import main
from handgrad.check import Reference, gradcheck
from handgrad.nn.module import Module

M = TypeVar("M", bound=Module)


@dataclass
class CliResult:
    status: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """Run ``handgrad ARGV`` in this process, capturing stdout, stderr and the exit status."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse errors
            status = int(exc.code or 0)
    return CliResult(status, out.getvalue(), err.getvalue())


def assert_grads(
    module: Module, *inputs: torch.Tensor, reference: Reference | None = None, **kwargs: float
) -> None:
    """The one helper: every gradient of ``module`` for ``inputs`` matches autograd and
    finite differences in float64 (and the forward matches ``reference`` when given)."""
    report = gradcheck(module, *inputs, reference=reference, **kwargs)
    assert report.tensors, f"nothing was checked for {report.module}"
    assert report.ok, str(report)


def with_random_affine(m: M) -> M:
    """A batch norm whose ``gamma`` (some negative) and ``beta`` are random: the defaults, ones
    and zeros, would leave terms of the backward formula unexercised."""
    if m.affine:
        m.weight.data.normal_()
        m.bias.data.normal_()
    return m


def bright_quadrant_data(path: Path, side: int = 8) -> Path:
    """An ``.npz`` of ``side`` x ``side`` images whose class (0..3) is the bright quadrant
    (train 96 / valid 32 / test 32 rows), learnable in one epoch. Name it ``*fashion*`` to get
    Fashion-MNIST's class names (flips and ``--tta`` apply, images are read by plain resizing)."""
    rng = np.random.default_rng(0)
    parts, h = {}, side // 2
    for split, n in (("train", 96), ("valid", 32), ("test", 32)):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 40, (n, side, side))
        for i, c in enumerate(y):
            x[i, h * (c // 2) : h * (c // 2) + h, h * (c % 2) : h * (c % 2) + h] = 230
        parts[f"x_{split}"], parts[f"y_{split}"] = x.astype(np.uint8), y
    np.savez(path, **parts)
    return path
