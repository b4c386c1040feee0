"""Helpers the tests share (imported as ``from support import ...``; ``tests/`` is on the
path, see ``pythonpath`` in pyproject.toml): the CLI run in-process, and the one gradient-check
helper every differentiable thing goes through."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import torch

from handgrad.app.cli import main
from handgrad.check import Reference, gradcheck
from handgrad.nn.module import Module


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
