"""The PyTorch bridge: hand-written backward passes inside torch models, weights both ways."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

import handgrad.interop.torch as hgt
from handgrad.check.cases import CASES
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.module import Module, Sequential

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second BLAS thread only adds synchronisation, and on a busy
    machine OpenMP threads waiting for each other made this file 3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeded(fn, seed: int = 0):
    """``fn`` with torch's global generator re-seeded before every call (dropout-like layers
    must draw the same mask in every forward that gradcheck compares)."""

    def call(*args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(*args)

    return call


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradcheck_every_builtin_case(case) -> None:
    """torch.autograd.gradcheck (float64) through the hand-written backward: input gradients
    and parameter gradients, for every case that ``handgrad check`` knows."""
    g = torch.Generator().manual_seed(0)
    module = case.make(g).double().train()
    inputs = [x.detach().clone() for x in case.inputs(g)]
    for i, x in enumerate(inputs):
        x.requires_grad_(x.is_floating_point() and i not in module.no_grad_args)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n = len(inputs)

    def fn(*tensors):
        return hgt.functional_call(module, tensors[n:], *tensors[:n])

    # Large cases (convolutions, the tiny cnn) compare random projections v^T J u instead of
    # the whole Jacobian (fast_mode): a wrong gradient still fails, at a fraction of the cost.
    fast = sum(t.numel() for t in (*inputs, *params) if t.is_floating_point()) > 300
    assert torch.autograd.gradcheck(
        seeded(fn), (*inputs, *params), eps=1e-6, atol=1e-6, fast_mode=fast
    )
    assert all(m.pending == 0 for m in module.modules())  # nothing left on the stacks
    assert all(p.g is None for p in module.parameters())  # handgrad's own .g untouched


def test_wrong_hand_gradient_is_caught() -> None:
    """The check can fail: a layer whose bwd forgets the factor 2 of x**2."""

    class BadSquare(Module):
        def forward(self, x):
            return x * x

        def bwd(self, out, x):
            x.g = out.g * x  # should be 2 * x

    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    layer = hgt.as_function(BadSquare())
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(layer, (x,))


def mixed_pair() -> tuple[nn.Module, nn.Module]:
    """The same network twice: with a wrapped handgrad Linear, and all-PyTorch."""
    torch.manual_seed(0)
    hg = Linear(6, 5, generator=torch.Generator().manual_seed(1)).double()
    ours = nn.Sequential(hgt.as_function(hg), nn.Tanh(), nn.Linear(5, 3)).double()
    ref = nn.Sequential(hgt.to_torch(hg), nn.Tanh(), nn.Linear(5, 3)).double()
    ref[2].load_state_dict(ours[2].state_dict())
    return ours, ref


def test_trains_inside_a_torch_model_like_pytorch() -> None:
    """Five torch.optim.SGD steps: same losses and weights as the all-PyTorch twin, and the
    handgrad layer's own weights are the ones being trained (shared storage)."""
    ours, ref = mixed_pair()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, ref)]
    for _ in range(5):
        for m, opt in zip((ours, ref), opts, strict=True):
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    torch.testing.assert_close(ours(x), ref(x))
    hg_layer = ours[0].module
    torch.testing.assert_close(hg_layer.weight.as_subclass(torch.Tensor), ref[0].weight.t())
    assert hg_layer.weight.g is None


def test_state_dict_names_match_handgrad() -> None:
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2))
    wrapped = hgt.as_function(model)
    assert list(wrapped.state_dict()) == list(model.state_dict())
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_two_calls_any_backward_order() -> None:
    """One wrapped module called twice; autograd reaches the second call's node first and the
    first call's node only after a long torch chain. Each must use its own inputs."""
    ours, ref = mixed_pair()
    a1, b1 = torch.randn(4, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    for m in (ours, ref):
        layer = m[0]
        a, b = layer(a1), layer(b1)
        c = a
        for _ in range(5):
            c = torch.sin(c) * 1.5
        (c.sum() + (b * b).sum()).backward()
    torch.testing.assert_close(ours[0].weight.grad, ref[0].weight.grad.t())
    torch.testing.assert_close(ours[0].bias.grad, ref[0].bias.grad)


def test_retain_graph_backward_twice_accumulates() -> None:
    layer = hgt.as_function(Linear(3, 2).double())
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x).pow(2).sum()
    out.backward(retain_graph=True)
    first = layer.weight.grad.clone()
    out.backward()
    torch.testing.assert_close(layer.weight.grad, 2 * first)


def test_inference_keeps_no_context() -> None:
    """More calls than ``max_pending`` without backward: fine under no_grad and on data that
    needs no gradient (the contexts are dropped), and nothing is pending afterwards."""
    model = Sequential(Linear(3, 4), ReLU())
    layer = hgt.as_function(model)
    x = torch.randn(2, 3)
    with torch.no_grad():
        for _ in range(model.max_pending + 5):
            layer(x)
    for p in layer.parameters():
        p.requires_grad_(False)
    for _ in range(model.max_pending + 5):
        layer(x)
    assert all(m.pending == 0 for m in model.modules())


def test_eval_mode_forward_then_backward_explains() -> None:
    layer = hgt.as_function(Linear(3, 2)).eval()
    assert not layer.module.training
    out = layer(torch.randn(2, 3))  # inference works
    with pytest.raises(RuntimeError, match=r"eval mode.*\.train\(\)"):
        out.sum().backward()


def test_in_place_change_of_output_is_an_error() -> None:
    layer = hgt.as_function(ReLU())
    x = torch.randn(4, requires_grad=True)
    y = layer(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_double_backward_refused() -> None:
    layer = hgt.as_function(Linear(3, 2).double())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


def test_loss_module_with_integer_free_target() -> None:
    """A two-argument module (a loss): only the prediction gets a gradient."""
    from handgrad.nn.layers.losses import MSELoss

    loss = hgt.as_function(MSELoss())
    pred = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, dtype=torch.float64)
    loss(pred, target).backward()
    torch.testing.assert_close(pred.grad[:, 0], 2 * (pred[:, 0] - target).detach() / 6)


def test_cast_wrapper_relinks_handgrad_parameters() -> None:
    layer = hgt.as_function(Linear(3, 2))
    layer.double()
    x = torch.randn(2, 3, dtype=torch.float64)
    assert layer(x).dtype == torch.float64
    assert layer.module.weight.dtype == torch.float64
    assert layer.module.weight.data_ptr() == layer.weight.data_ptr()


# ------------------------------------------------------------------------------- conversion
def sample_model() -> Sequential:
    g = torch.Generator().manual_seed(3)
    return Sequential(
        Linear(7, 5, generator=g), ReLU(), Linear(5, 4, bias=False, generator=g), ReLU(),
        Linear(4, 2, generator=g),
    )  # fmt: skip


def test_to_torch_layout_and_outputs() -> None:
    model = sample_model()
    for p in model.parameters():  # non-zero biases, so a dropped bias would show
        p.data.add_(0.1 * torch.randn(p.shape))
    tm = hgt.to_torch(model)
    assert [type(m) for m in tm] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert tm[2].bias is None
    assert torch.equal(tm[0].weight, model[0].weight.t())  # (out, in) vs (in, out)
    x = torch.randn(9, 7)
    torch.testing.assert_close(tm(x), model(x).detach(), rtol=1e-6, atol=1e-6)
    model.clear_saved()


def test_round_trip_keeps_weights_and_outputs() -> None:
    model = sample_model().eval()
    back = hgt.from_torch(hgt.to_torch(model)).eval()
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b)
    x = torch.randn(9, 7)
    assert torch.equal(back(x), model(x))
    tm = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    again = hgt.to_torch(hgt.from_torch(tm))
    xd = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(again(xd), tm(xd), rtol=0, atol=1e-12)
    assert next(again.parameters()).dtype == torch.float64


def test_unknown_layer_names_the_fix() -> None:
    with pytest.raises(TypeError, match=r"no conversion for torch layer PReLU.*register"):
        hgt.from_torch(nn.Sequential(nn.Linear(2, 2), nn.PReLU()))
    with pytest.raises(TypeError, match=r"no handgrad equivalent .*padding"):
        hgt.from_torch(nn.Conv2d(1, 2, 3, padding="same"))


@CUDA
def test_as_function_on_cuda() -> None:
    ours, ref = mixed_pair()
    ours.cuda(), ref.cuda()
    x = torch.randn(8, 6, dtype=torch.float64, device="cuda")
    for m in (ours, ref):
        m(x).pow(2).sum().backward()
    assert ours[0].module.weight.device.type == "cuda"
    torch.testing.assert_close(ours[0].weight.grad, ref[0].weight.grad.t())


def convertible(module) -> bool:
    try:
        hgt.to_torch(module)
    except TypeError:
        return False
    return True


CONVERTIBLE = [c for c in CASES if convertible(c.make(torch.Generator().manual_seed(0)))]


def test_every_conversion_has_a_case() -> None:
    covered = {type(m) for c in CONVERTIBLE for m in c.make(torch.Generator()).modules()}
    missing = {c.handgrad.__name__ for c in hgt.CONVERSIONS} - {t.__name__ for t in covered}
    assert not missing, f"conversions without a check case in cases.py: {sorted(missing)}"


@pytest.mark.parametrize("case", CONVERTIBLE, ids=lambda c: c.name)
def test_to_torch_computes_the_same(case) -> None:
    """Every check case whose layers all have a conversion: the same outputs, both ways, in
    training mode (batch statistics) and in eval mode (running statistics)."""
    g = torch.Generator().manual_seed(0)
    model = case.make(g).double()
    inputs = case.inputs(g)
    for mode in (True, False):
        model.train(mode)
        tm = hgt.to_torch(model).train(mode)
        back = hgt.from_torch(tm).train(mode)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            expected = model(*inputs)
        model.clear_saved()
        if mode and any(isinstance(m, nn.Dropout) for m in tm.modules()):
            continue  # different random masks
        with torch.no_grad():
            torch.testing.assert_close(tm(*inputs), expected.detach())
        torch.testing.assert_close(back(*inputs).detach(), expected.detach())
        back.clear_saved()


def test_cnn_round_trip_with_trained_statistics() -> None:
    """The built-in cnn (Reshape, Conv2d, BatchNorm2d, ReLU, GlobalAvgPool, Dropout, Linear)
    after a few training forwards moved its running statistics: same outputs in eval mode."""
    from handgrad.nn.models import build_model

    model = build_model("cnn", generator=torch.Generator().manual_seed(0), channels=(4, 8),
                        strides=(1, 2))  # fmt: skip
    x = torch.randn(6, 784)
    for _ in range(3):
        model(x)
    model.clear_saved()
    model.eval()
    tm = hgt.to_torch(model).eval()
    torch.testing.assert_close(tm(x).detach(), model(x), rtol=1e-4, atol=1e-5)
    back = hgt.from_torch(tm).eval()
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    assert torch.equal(back(x), model(x))
