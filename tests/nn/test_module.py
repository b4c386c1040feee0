"""The Module contract: reuse adds up, misuse is an error, state is explicit."""

from __future__ import annotations

import pytest
import torch

from handgrad import Linear, Module, MSELoss, Parameter, ReLU, Sequential
from handgrad.nn.lesson import Lin, Model

from support import assert_grads


def autograd_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    fn(*leaves).sum().backward()
    return [t.grad for t in leaves]


class Residual(Module):
    """``y = x + f(x)``: the tensor x is used twice, and both gradients must add up."""

    def __init__(self, f: Module) -> None:
        self.f = f

    def forward(self, x):
        return x + self.f(x)

    def bwd(self, out, x):
        x.g = out.g + self.f.backward(out.g)


class Mul(Module):
    def forward(self, a, b):
        return a * b

    def bwd(self, out, a, b):
        a.g = out.g * b
        b.g = out.g * a


def test_module_used_twice_accumulates_parameter_grads() -> None:
    torch.manual_seed(0)
    lin = Linear(4, 4).double()
    net = Sequential(lin, ReLU(), lin)  # the same weights applied twice
    x = torch.randn(3, 4, dtype=torch.float64)
    net(x)
    dx = net.backward(torch.ones(3, 4, dtype=torch.float64))
    w, b = lin.weight.detach(), lin.bias.detach()
    gx, gw, gb = autograd_grads(lambda x, w, b: torch.relu(x @ w + b) @ w + b, x, w, b)
    torch.testing.assert_close(dx, gx)
    torch.testing.assert_close(lin.weight.g, gw)
    torch.testing.assert_close(lin.bias.g, gb)
    assert_grads(net, x)


def test_tensor_used_twice_gets_both_contributions() -> None:
    net = Residual(Sequential(Linear(3, 3), ReLU())).double()
    assert_grads(net, torch.randn(5, 3, dtype=torch.float64))


def test_same_tensor_twice_in_one_call() -> None:
    x = torch.randn(4, dtype=torch.float64)
    m = Mul()
    m(x, x)
    da, db = m.backward(torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(da + db, 2 * x)  # d(x^2)/dx
    assert not hasattr(x, "g")


def test_backward_twice_is_an_error_not_a_stale_gradient() -> None:
    layer, x = Linear(3, 2), torch.randn(4, 3)
    layer(x)
    layer.backward(torch.ones(4, 2))
    first = layer.weight.g.clone()
    with pytest.raises(RuntimeError, match=r"Linear\(.*\)\.backward\(\).*backward called twice"):
        layer.backward(torch.ones(4, 2))
    assert torch.equal(layer.weight.g, first)


def test_backward_before_forward_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no forward call"):
        ReLU().backward(torch.ones(2))


def test_eval_keeps_nothing_and_says_so() -> None:
    layer = Linear(3, 2).eval()
    for _ in range(200):  # inference in a loop must not pile up contexts
        layer(torch.randn(4, 3))
    assert layer.pending == 0
    with pytest.raises(RuntimeError, match=r"eval mode.*\.train\(\)"):
        layer.backward(torch.ones(4, 2))


def test_forgotten_backward_is_caught() -> None:
    layer = ReLU()
    layer.max_pending = 3
    for _ in range(3):
        layer(torch.randn(2))
    with pytest.raises(RuntimeError, match="waiting for backward"):
        layer(torch.randn(2))


def test_gradients_accumulate_until_zero_grad() -> None:
    layer, x = Linear(3, 2), torch.randn(4, 3)
    for _ in range(2):
        layer(x)
        layer.backward(torch.ones(4, 2))
    torch.testing.assert_close(layer.bias.g, torch.full((2,), 8.0))
    layer.zero_grad()
    assert layer.weight.g is None and layer.bias.g is None


def test_wrong_gradient_shape_names_module_and_tensor() -> None:
    class Bad(Module):
        def __init__(self):
            self.w = Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

        def bwd(self, out, x):
            x.g = out.g
            self.w.g = out.g  # forgot to sum over the batch

    m = Bad()
    m(torch.ones(2, 3))
    with pytest.raises(RuntimeError, match=r"Bad\(\)\.bwd set w\.g with shape \(2, 3\)"):
        m.backward(torch.ones(2, 3))


def test_dout_shape_is_checked() -> None:
    layer = ReLU()
    layer(torch.randn(2, 3))
    with pytest.raises(ValueError, match="dout has shape"):
        layer.backward(torch.ones(3, 2))


def test_need_input_grad_false_skips_dx() -> None:
    layer = Linear(3, 2)
    layer(torch.randn(4, 3))
    assert layer.backward(torch.ones(4, 2), need_input_grad=False) is None
    assert layer.weight.g is not None


def test_parameters_state_dict_and_repr() -> None:
    net = Sequential(Linear(4, 3), ReLU(), Linear(3, 1, bias=False))
    names = [n for n, _ in net.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight"]
    state = net.state_dict()
    other = Sequential(Linear(4, 3), ReLU(), Linear(3, 1, bias=False))
    other.load_state_dict(state)
    x = torch.randn(2, 4)
    torch.testing.assert_close(net.eval()(x), other.eval()(x))
    with pytest.raises(ValueError, match=r"missing \['layers.2.weight'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "layers.2.weight"})
    assert "(layers.0): Linear(in_features=4, out_features=3, bias=True)" in repr(net)


def test_train_eval_recursive_and_to_dtype() -> None:
    net = Sequential(Linear(2, 2), Sequential(ReLU()))
    net.eval()
    assert not any(m.training for m in net.modules())
    w = net.layers[0].weight
    net.double()
    assert net.layers[0].weight is w and w.dtype == torch.float64


def test_hooks_see_forward_and_backward() -> None:
    seen = []
    layer = ReLU()
    h1 = layer.register_forward_hook(lambda m, args, out: seen.append(("f", out.shape)))
    h2 = layer.register_backward_hook(lambda m, dout, grads: seen.append(("b", grads[0].shape)))
    layer(torch.randn(2, 3))
    layer.backward(torch.ones(2, 3))
    h1.remove()
    h2.remove()
    layer(torch.randn(2, 3))
    assert seen == [("f", (2, 3)), ("b", (2, 3))]


def test_lesson_model_matches_autograd_and_fills_input_grad() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(64, 10), torch.randint(0, 10, (64,)).float()
    w1, b1, w2, b2 = torch.randn(10, 5), torch.zeros(5), torch.randn(5, 1), torch.zeros(1)
    model = Model.lesson(w1, b1, w2, b2)
    loss = model(x, y)
    model.backward()
    gx, gw1, gb1, gw2, gb2 = autograd_grads(
        lambda x, w1, b1, w2, b2: ((torch.relu(x @ w1 + b1) @ w2 + b2)[:, 0] - y).pow(2).mean(),
        x,
        w1,
        b1,
        w2,
        b2,
    )
    expected = ((torch.relu(x @ w1 + b1) @ w2 + b2)[:, 0] - y).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.g, gx)
    lin1, lin2 = model.layers[0], model.layers[2]
    assert isinstance(lin1, Lin)
    for ours, theirs in (
        (lin1.weight.g, gw1),
        (lin1.bias.g, gb1),
        (lin2.weight.g, gw2),
        (lin2.bias.g, gb2),
    ):
        torch.testing.assert_close(ours, theirs)


def test_mse_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="one prediction per target"):
        MSELoss()(torch.randn(4, 2), torch.randn(4))


def test_linear_rejects_wrong_input_width() -> None:
    with pytest.raises(ValueError, match=r"expected input \(N, 3\), got \(2, 4\)"):
        Linear(3, 2)(torch.randn(2, 4))


def test_kaiming_init_keeps_scale_and_randn_explodes() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 784, generator=g)
    kaiming = Linear(784, 50, generator=g).eval()(x)
    plain = Linear(784, 50, init="randn", generator=g).eval()(x)
    assert 0.3 < kaiming.std() < 3 and plain.std() > 8
