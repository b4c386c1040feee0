"""The checker itself: it passes correct layers and names the wrong tensor of broken ones."""

from __future__ import annotations

import pytest
import torch

from handgrad import Linear, Module, Parameter
from handgrad.check import gradcheck

from support import run_cli


class ScaledWrongWeight(Linear):
    """dW off by a factor of 2: the checker must name ``weight`` and nothing else."""

    def bwd(self, out, x):
        super().bwd(out, x)
        self.weight.g = 2 * self.weight.g


class ForgetsInput(Module):
    def forward(self, x):
        return 3 * x

    def bwd(self, out, x):
        pass


class WrongInput(Module):
    def forward(self, x):
        return x.pow(3)

    def bwd(self, out, x):
        x.g = 2 * x * out.g  # should be 3 x^2


def x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_wrong_weight_gradient_is_named() -> None:
    report = gradcheck(ScaledWrongWeight(4, 3), x(5, 4))
    assert not report.ok
    assert [t.name for t in report.failures] == ["weight"]
    assert "autograd" in report.failures[0].problem
    assert "finite differences" in report.failures[0].problem


def test_missing_and_wrong_input_gradients_fail() -> None:
    missing = gradcheck(ForgetsInput(), x(3, 2))
    assert [t.problem for t in missing.failures] == ["bwd set no gradient for it"]
    wrong = gradcheck(WrongInput(), x(3, 2))
    assert [t.name for t in wrong.failures] == ["x"]


def test_errors_are_measured_not_assumed() -> None:
    report = gradcheck(Linear(3, 2), x(4, 3))
    assert report.ok
    for t in report.tensors:
        assert t.numeric_rel < 1e-6 and t.autograd_rel < 1e-12
        assert t.checked_elements == t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1)


def test_large_tensors_are_sampled() -> None:
    report = gradcheck(Linear(100, 30), x(2, 100), samples=10)
    weight = next(t for t in report.tensors if t.name == "weight")
    assert weight.checked_elements == 10 and weight.ok


def test_user_module_is_not_modified() -> None:
    layer = Linear(3, 2)
    before = layer.weight.clone()
    gradcheck(layer, x(2, 3))
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, before)
    assert layer.weight.g is None and layer.pending == 0


def test_forward_raising_is_reported() -> None:
    class Boom(Module):
        def forward(self, x):
            raise RuntimeError("kaboom")

    report = gradcheck(Boom(), x(2, 2))
    assert not report.ok and "kaboom" in report.summary()


def test_check_cli_builtin_table() -> None:
    res = run_cli("check")
    assert res.status == 0, res.out + res.err
    assert "Linear" in res.out and "MSELoss" in res.out and "modules passed" in res.out


BROKEN = """
import torch
from handgrad import Module, Parameter

class Scale(Module):
    def __init__(self, n):
        self.w = Parameter(torch.randn(n))
    def forward(self, x):
        return x * self.w
    def bwd(self, out, x):
        x.g = out.g * self.w
        self.w.g = {w_grad}
"""


def test_check_cli_user_layer(tmp_path) -> None:
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(BROKEN.format(w_grad="(out.g * x).sum(0)"))
    bad.write_text(BROKEN.format(w_grad="out.g.sum(0)"))
    ok = run_cli("check", f"{good}:Scale", "--args", "4", "--shape", "3,4")
    assert ok.status == 0, ok.out + ok.err
    res = run_cli("check", f"{bad}:Scale", "--args", "4", "--shape", "3,4")
    assert res.status == 1
    assert "FAIL" in res.out and "w: hand gradient differs" in res.out


def test_check_cli_bad_input(tmp_path) -> None:
    missing = run_cli("check", f"{tmp_path}/nope.py:X", "--shape", "2,2")
    assert missing.status == 2 and "no such file" in missing.err
    f = tmp_path / "layers.py"
    f.write_text(BROKEN.format(w_grad="(out.g * x).sum(0)"))
    wrong = run_cli("check", f"{f}:Nope", "--shape", "2,2")
    assert wrong.status == 2 and "layers found there: Scale" in wrong.err
    no_shape = run_cli("check", f"{f}:Scale", "--args", "2")
    assert no_shape.status == 2 and "--shape" in no_shape.err
    bad_args = run_cli("check", f"{f}:Scale", "--args", "__import__('os')", "--shape", "2,2")
    assert bad_args.status == 2 and "literals" in bad_args.err
    assert len(missing.err.strip().splitlines()) == 1


def test_parameter_is_plain_for_ops() -> None:
    p = Parameter(torch.ones(3))
    assert type(p * 2) is torch.Tensor and p.g is None and not p.requires_grad


@pytest.mark.parametrize("seed", range(10))
def test_dout_never_equals_the_input(tmp_path, seed: int) -> None:
    """The README's Scale with dW computed from x alone: the upstream gradient must never be
    the input (then x * x would equal out.g * x), whatever the seed, on both paths."""
    path = tmp_path / "scale.py"
    path.write_text(BROKEN.format(w_grad="(x * x).sum(0)"))
    r = run_cli("check", f"{path}:Scale", "--args", "4", "--shape", "8,4", "--seed", str(seed))
    assert r.status == 1 and "w: hand gradient differs" in r.out, r.out + r.err

    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    torch.manual_seed(seed)  # the collision the issue names: the user's seed equals ours
    x = torch.randn(8, 4, dtype=torch.float64)
    report = gradcheck(namespace["Scale"](4), x, seed=seed)
    assert [t.name for t in report.failures] == ["w"] and report.status == 1, str(report)
