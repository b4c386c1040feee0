"""``handgrad check``'s residual-block cases: the canonical "input used twice" layer. The
check passes for ``ResBlock`` and catches a backward that forgets either path's gradient."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from handgrad.check import gradcheck
from handgrad.check.cases import CASES, resblock
from handgrad.nn.layers import ResBlock

RESIDUAL = [c for c in CASES if "ResBlock" in c.name or "resnet" in c.name]


def test_cases_cover_both_skip_paths_and_the_model() -> None:
    made = [c.make(torch.Generator().manual_seed(0)) for c in RESIDUAL]
    blocks = [m for model in made for m in model.modules() if isinstance(m, ResBlock)]
    assert any(b.skip_conv is None for b in blocks) and any(b.skip_conv for b in blocks)
    assert any(not isinstance(m, ResBlock) for m in made)  # the whole tiny resnet too


@pytest.mark.parametrize("case", RESIDUAL, ids=lambda c: c.name)
def test_residual_cases_pass(case) -> None:
    g = torch.Generator().manual_seed(0)
    report = gradcheck(case.make(g), *case.inputs(g), reference=case.reference)
    assert report.ok, str(report)


class MainPathOnly(ResBlock):
    """A wrong backward: ``x.g`` from the main path alone (the skip path's gradient lost)."""

    def bwd(self, out: Tensor, x: Tensor) -> None:
        super().bwd(out, x)
        g = out.g * (out > 0)
        skip = g if self.skip_conv is None else None
        if skip is not None:
            x.g = x.g - skip


class SkipPathOnly(ResBlock):
    """A wrong backward: ``x.g`` from the identity skip alone."""

    def bwd(self, out: Tensor, x: Tensor) -> None:
        super().bwd(out, x)
        x.g = out.g * (out > 0)


@pytest.mark.parametrize("wrong", [MainPathOnly, SkipPathOnly])
def test_a_block_that_drops_one_path_fails_the_check(wrong: type[ResBlock]) -> None:
    g = torch.Generator().manual_seed(0)
    good = resblock(3, 3, 1)(g)
    bad = wrong(3, 3)
    bad.load_state_dict(good.state_dict())
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    report = gradcheck(bad, x)
    assert not report.ok
    assert gradcheck(good, x).ok
