"""The checker's contract with a stranger's layer: what it finds by itself, what it explains,
and that it never answers with a traceback or a wrong exit status (issue 13)."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from handgrad import Module, Parameter
from handgrad.check import gradcheck

from support import run_cli


def x64(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Relu(Module):
    def forward(self, x):
        return x.clamp_min(0.0)

    def bwd(self, out, x):
        x.g = (x > 0).to(x.dtype) * out.g


class ReluWrongAtZero(Relu):
    def bwd(self, out, x):
        x.g = (x >= 0).to(x.dtype) * out.g + (x == 0).to(x.dtype) * 3 * out.g


def test_kinks_are_excluded_and_counted() -> None:
    x = x64(6, 5)
    x[::2, 1] = 0.0  # exactly at the kink: finite differences see a slope of 0.5 there
    report = gradcheck(Relu(), x)
    assert report.ok, str(report)
    assert report.tensors[0].excluded == 3
    assert any("3 element(s) at a non-differentiable point" in n for n in report.notes)
    # a gradient outside [0, 1] at the kink is not a subgradient: still wrong
    assert gradcheck(ReluWrongAtZero(), x).failures[0].name == "x"


class OwnGenerator(Module):
    """Dropout with a generator of its own: every forward must draw the same mask."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(7)

    def forward(self, x):
        self.mask = (torch.rand(x.shape, generator=self.gen) > 0.5).to(x.dtype) * 2
        return x * self.mask

    def bwd(self, out, x):
        x.g = out.g * self.mask


class GlobalDropout(OwnGenerator):
    def forward(self, x):
        self.mask = (torch.rand(x.shape) > 0.5).to(x.dtype) * 2
        return x * self.mask


class Clock(Module):
    """Randomness the checker cannot replay: a generator seeded from the clock."""

    def forward(self, x):
        g = torch.Generator().manual_seed(time.perf_counter_ns())
        self.noise = torch.rand(x.shape, generator=g, dtype=x.dtype)
        return x * self.noise

    def bwd(self, out, x):
        x.g = out.g * self.noise


def test_random_layers() -> None:
    assert gradcheck(OwnGenerator(), x64(4, 5)).ok
    assert gradcheck(GlobalDropout(), x64(4, 5)).ok
    report = gradcheck(Clock(), x64(4, 5))
    assert report.status == 2 and "forward is not repeatable" in report.summary(), str(report)


class NumpyTanh(Module):
    """A forward autograd cannot follow: checked by finite differences alone."""

    def forward(self, x):
        return torch.from_numpy(np.tanh(x.numpy()))

    def bwd(self, out, x):
        x.g = out.g * (1 - out**2)


class NumpyTanhWrong(NumpyTanh):
    def bwd(self, out, x):
        x.g = out.g * (1 - out)


def test_forward_outside_torch_falls_back_to_finite_differences() -> None:
    report = gradcheck(NumpyTanh(), x64(3, 4))
    assert report.ok, str(report)
    assert any("finite differences only" in n for n in report.notes)
    wrong = gradcheck(NumpyTanhWrong(), x64(3, 4))
    assert [t.name for t in wrong.failures] == ["x"] and wrong.status == 1


class Exits(Module):
    def forward(self, x):
        sys.exit(0)


class BackwardRaises(Relu):
    def bwd(self, out, x):
        x.g = out.g @ torch.ones(7, 7, dtype=out.dtype)


def test_user_code_raising_is_one_line_with_file_and_line() -> None:
    report = gradcheck(Exits(), x64(2, 3))
    assert report.status == 2 and "forward called sys.exit(0)" in report.summary()
    assert "test_gradcheck_contract.py:" in report.summary() and "sys.exit(0)" in report.summary()
    report = gradcheck(BackwardRaises(), x64(2, 3))
    assert report.status == 1 and "backward raised RuntimeError" in report.summary()
    assert "`x.g = out.g @ torch.ones(7, 7" in report.summary()


class Returns(Module):
    def forward(self, x):
        return 2 * x

    def bwd(self, out, x):
        return 2 * out.g


class LessonReturns:
    """The autograd.Function habit in the lesson's protocol: backward returns the gradient."""

    def __call__(self, inp):
        self.inp, self.out = inp, 2 * inp
        return self.out

    def backward(self):
        return 2 * self.out.g


class Accumulates(Module):
    def __init__(self) -> None:
        self.w = Parameter(torch.randn(4))

    def forward(self, x):
        return x * self.w

    def bwd(self, out, x):
        x.g = out.g * self.w
        w = self.w
        w.g += (out.g * x).sum(0)  # micrograd's habit, through an alias


def test_framework_habits_get_their_hint() -> None:
    returned = gradcheck(Returns(), x64(2, 3))
    assert returned.status == 1 and "bwd returned a Tensor" in returned.summary()
    lesson = gradcheck(LessonReturns(), x64(2, 3))
    assert [t.name for t in lesson.failures] == ["inp"]
    assert "backward returned a tensor instead" in lesson.failures[0].problem
    acc = gradcheck(Accumulates(), x64(2, 4))
    assert [t.name for t in acc.failures] == ["w"] and acc.status == 1
    assert "do not use +=" in acc.failures[0].problem


class Mse(Module):
    def forward(self, inp, targ):
        return ((inp - targ) ** 2).mean()

    def bwd(self, out, inp, targ):
        inp.g = 2 * (inp - targ) / inp.numel() * out.g


class Blend(Module):
    """out = a * c with c a constant the backward leaves alone: the user must say so."""

    def forward(self, a, c):
        return a * c

    def bwd(self, out, a, c):
        a.g = out.g * c


def test_targets_are_inferred_and_constants_need_declaring() -> None:
    report = gradcheck(Mse(), x64(5, 3), x64(5, 3, seed=1))
    assert report.ok and [t.name for t in report.tensors] == ["inp"]
    assert any("targ: taken as a target" in n for n in report.notes)
    blend = gradcheck(Blend(), x64(5, 3), x64(5, 3, seed=1))
    assert [t.name for t in blend.failures] == ["c"]
    assert "--no-grad c" in blend.failures[0].problem
    assert "no_grad_args = (1,)" in blend.failures[0].problem
    assert gradcheck(Blend(), x64(5, 3), x64(5, 3, seed=1), no_grad=("c",)).ok


class WrongShape(Module):
    def forward(self, inp):
        return inp.sum(1)

    def bwd(self, out, inp):
        inp.g = out.g  # not broadcast back to inp's shape


class WritesWeight(Module):
    def __init__(self) -> None:
        self.w = Parameter(torch.randn(3))

    def forward(self, x):
        return x * self.w

    def bwd(self, out, x):
        x.g = out.g * self.w
        self.w.g = (out.g * x).sum(0)
        self.w -= 0.1 * self.w.g  # an SGD step inside backward


def test_names_come_from_the_signature_and_writes_are_named() -> None:
    report = gradcheck(WrongShape(), x64(4, 3))
    assert [t.name for t in report.failures] == ["inp"], str(report)
    assert "shape" in report.failures[0].problem and "argument" not in report.summary()
    wrote = gradcheck(WritesWeight(), x64(4, 3))
    assert wrote.status == 1 and "bwd wrote into w" in wrote.summary()


W = torch.randn(3, 2, dtype=torch.float64)


class ReadsGlobal(Module):
    def forward(self, x):
        return x @ W

    def bwd(self, out, x):
        x.g = out.g @ W.t()


def test_global_weight_is_noted() -> None:
    report = gradcheck(ReadsGlobal(), x64(4, 3))
    assert report.ok and any("the global W" in n for n in report.notes), str(report)


LESSON_LIN = """
from my_helpers import matmul

class Lin():
    def __init__(self, w, b): self.w,self.b = w,b
    def __call__(self, inp):
        self.inp = inp
        self.out = matmul(inp, self.w) + self.b
        return self.out
    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = self.inp.t() @ self.out.g
        self.b.g = self.out.g.sum(0)
"""


def test_cli_imports_beside_the_file_and_exit_statuses(tmp_path) -> None:
    (tmp_path / "my_helpers.py").write_text("def matmul(a, b):\n    return a @ b\n")
    path = tmp_path / "layers.py"
    path.write_text(LESSON_LIN)
    args = ["--args", "randn(4,3), zeros(3)", "--shape", "8,4"]
    ok = run_cli("check", f"{path}:Lin", *args)
    assert ok.status == 0 and "inp, w, b" in ok.out, ok.out + ok.err
    path.write_text(LESSON_LIN.replace("self.b.g = self.out.g.sum(0)", "self.b.g = self.out.g[0]"))
    wrong = run_cli("check", f"{path}:Lin", *args)
    assert wrong.status == 1 and "b: hand gradient differs" in wrong.out
    path.write_text(LESSON_LIN.replace("self.out = matmul", "self.out = 1/0 + matmul"))
    broken = run_cli("check", f"{path}:Lin", *args)
    assert broken.status == 2 and "layers.py:8" in broken.out + broken.err
    assert "Traceback" not in broken.out + broken.err
    path.write_text("import sys\nsys.exit(0)\n")
    exits = run_cli("check", f"{path}:Lin", *args)
    assert exits.status == 2 and "sys.exit(0)" in exits.err and len(exits.err.splitlines()) == 1
    helped = run_cli("check", "--help")
    assert all(f"{s}:" in " ".join(helped.out.split()) or f"{s} " in helped.out for s in "012")


def test_a_reference_that_raises_or_disagrees_is_reported() -> None:
    def raises(layer, x):
        raise ValueError("no reference here")

    report = gradcheck(Relu(), x64(3, 4), reference=raises)
    assert report.status == 2 and "the reference raised ValueError" in report.summary()
    wrong_shape = gradcheck(Relu(), x64(3, 4), reference=lambda layer, x: x.sum())
    assert wrong_shape.status == 2 and "the reference returned ()" in wrong_shape.summary()
    off = gradcheck(Relu(), x64(3, 4), reference=lambda layer, x: x.clamp_min(0) + 1e-3)
    assert off.status == 1 and "forward differs from the reference" in off.summary()
    assert gradcheck(Relu(), x64(3, 4), reference=lambda layer, x: torch.relu(x)).ok
