"""Optimizers against torch.optim step by step (tinygrad test_optim style), state round trips,
and validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load, save

from handgrad.nn.module import Parameter
from handgrad.optim.optimizers import OPTIMIZERS, SGD, Adam, AdamW, Optimizer

SHAPES = [(5, 3), (3,), (4, 2, 2), (1,)]

CONFIGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adam", {"lr": 0.003, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.3, "betas": (0.5, 0.9)}),
]
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def initial(dtype: torch.dtype | tuple[torch.dtype, ...], seed: int = 0) -> list[torch.Tensor]:
    """The starting parameters, in ``dtype`` (or one dtype per shape)."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,) * len(SHAPES)
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=g, dtype=torch.float64).to(d)
        for s, d in zip(SHAPES, dtypes, strict=True)
    ]


def grad_of(p: torch.Tensor, step: int, k: int) -> torch.Tensor:
    """A gradient that depends on the current parameter (so trajectories that drift apart show
    it) plus seeded noise: d/dp of 0.5 p^2 + cos(p), perturbed."""
    g = torch.Generator().manual_seed(1000 * step + k)
    noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
    return p.detach() - torch.sin(p.detach()) + 0.1 * noise


def skips(step: int, k: int) -> bool:
    """The last parameter gets no gradient on some steps (a frozen or unused layer)."""
    return k == len(SHAPES) - 1 and step % 3 == 1


def run_handgrad(name, kwargs, dtype, steps=20) -> list[torch.Tensor]:
    params = [Parameter(t) for t in initial(dtype)]
    opt = OPTIMIZERS[name](params, **kwargs)
    for step in range(steps):
        for k, p in enumerate(params):
            p.g = None if skips(step, k) else grad_of(p, step, k)
        opt.step()
        opt.zero_grad()
    return [p.as_subclass(torch.Tensor) for p in params]


def run_torch(name, kwargs, dtype, steps=20) -> list[torch.Tensor]:
    params = [t.clone().requires_grad_(True) for t in initial(dtype)]
    opt = TORCH[name](params, **kwargs)
    for step in range(steps):
        for k, p in enumerate(params):
            p.grad = None if skips(step, k) else grad_of(p, step, k)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach() for p in params]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda v: str(v))
def test_matches_torch_optim_over_20_steps(name, kwargs, dtype) -> None:
    ours = run_handgrad(name, kwargs, dtype)
    ref = run_torch(name, kwargs, dtype)
    start = initial(dtype)
    for a, b, s in zip(ours, ref, start, strict=True):
        assert a.dtype == dtype
        assert not torch.equal(a, s)  # it moved
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "kwargs"), [CONFIGS[i] for i in (4, 6, 9)], ids=lambda v: str(v))
def test_a_list_of_mixed_dtypes_matches_torch_optim(name, kwargs) -> None:
    """The rules' ``torch._foreach_*`` calls take such a list themselves, a tensor at a time."""
    dtypes = (torch.float32, torch.float64, torch.float32, torch.float64)
    ours, ref = run_handgrad(name, kwargs, dtypes), run_torch(name, kwargs, dtypes)
    for a, b, d in zip(ours, ref, dtypes, strict=True):
        assert a.dtype == d
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_step_leaves_gradients_and_gradless_params_alone() -> None:
    a, b = Parameter(torch.ones(3)), Parameter(torch.ones(2))
    opt = SGD([a, b], lr=0.5, momentum=0.9, weight_decay=0.1)
    g = torch.full((3,), 2.0)
    a.g = g
    opt.step()
    assert torch.equal(g, torch.full((3,), 2.0))  # p.g is never modified in place
    assert torch.equal(b, torch.ones(2)) and opt.state["momentum_buffer"][1] is None
    torch.testing.assert_close(a.as_subclass(torch.Tensor), torch.full((3,), 1 - 0.5 * 2.1))
    opt.zero_grad()
    assert a.g is None and b.g is None
    before = a.clone()
    opt.step()  # no gradients at all: nothing moves, the step count stays
    assert torch.equal(a, before) and opt.step_count == 1


def test_lr_is_settable_and_used() -> None:
    p = Parameter(torch.zeros(2))
    opt = SGD([p], lr=1.0)
    opt.lr = 0.25
    p.g = torch.ones(2)
    opt.step()
    assert torch.equal(p.as_subclass(torch.Tensor), torch.full((2,), -0.25))
    for bad in (-1.0, math.nan, math.inf, "0.1"):
        with pytest.raises(ValueError, match="learning rate"):
            opt.lr = bad


# ------------------------------------------------------------------------------ state dicts
def train(opt: Optimizer, params: list[Parameter], steps: range) -> None:
    for step in steps:
        for k, p in enumerate(params):
            p.g = None if skips(step, k) else grad_of(p, step, k)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda v: str(v))
def test_state_dict_round_trip_continues_bitwise(name, kwargs) -> None:
    straight = [Parameter(t) for t in initial(torch.float32)]
    opt = OPTIMIZERS[name](straight, **kwargs)
    train(opt, straight, range(20))

    first = [Parameter(t) for t in initial(torch.float32)]
    opt1 = OPTIMIZERS[name](first, **kwargs)
    train(opt1, first, range(11))
    tensors, meta = opt1.state_dict()
    # Through the real file formats: safetensors bytes and JSON text.
    tensors = load(save(tensors))
    meta = json.loads(json.dumps(meta))
    weights = [p.detach().clone() for p in first]
    del opt1, first

    resumed = [Parameter(w) for w in weights]
    other = {"lr": 123.0} if name == "sgd" else {}  # hyperparameters come from the state
    opt2 = OPTIMIZERS[name](resumed, **{**kwargs, **other})
    opt2.load_state_dict(tensors, meta)
    assert opt2.lr == kwargs["lr"] and opt2.step_count == 11
    train(opt2, resumed, range(11, 20))
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_state_dict_contents() -> None:
    params = [Parameter(t) for t in initial(torch.float64)]
    opt = Adam(params, lr=0.01, betas=(0.8, 0.9))
    train(opt, params, range(2))
    tensors, meta = opt.state_dict()
    assert set(tensors) == {f"state.{i}.{n}" for i in range(4) for n in ("exp_avg", "exp_avg_sq")}
    assert meta["type"] == "Adam" and meta["step_count"] == 2
    assert meta["param_steps"] == [2, 2, 2, 1]  # the last one skipped step 1
    assert meta["hyperparameters"] == {
        "lr": 0.01,
        "betas": [0.8, 0.9],
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    tensors["state.0.exp_avg"].add_(1.0)  # a copy: the optimizer's state is untouched
    assert not torch.equal(tensors["state.0.exp_avg"], opt.state["exp_avg"][0])
    plain = SGD(params, lr=0.1)
    train(plain, params, range(1))
    assert plain.state_dict()[0] == {}


def _saved(name="adam", steps=2, shapes=SHAPES):
    params = [Parameter(torch.randn(s)) for s in shapes]
    opt = OPTIMIZERS[name](params, lr=0.01)
    train(opt, params, range(steps))
    return opt.state_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t, m: m.update(type="SGD"), "saved by SGD"),
        (lambda t, m: m.update(param_shapes=m["param_shapes"][:2]), "has 2 parameters"),
        (lambda t, m: m["param_shapes"].__setitem__(0, [3, 5]), r"parameter 0 was \(3, 5\)"),
        (lambda t, m: t.pop("state.1.exp_avg"), r"missing \['state.1.exp_avg'\]"),
        (lambda t, m: t.update({"state.9.exp_avg": torch.zeros(1)}), "unexpected"),
        (lambda t, m: t.update({"state.0.exp_avg": torch.zeros(2)}), "has shape"),
        (lambda t, m: m["hyperparameters"].update(eps=-1.0), "eps"),
        (lambda t, m: m["hyperparameters"].update(momentum=0.9), "hyperparameters"),
        (lambda t, m: m.clear(), "no 'type'"),
    ],
)
def test_load_state_dict_mismatch_is_a_clear_error(mutate, message) -> None:
    tensors, meta = _saved()
    mutate(tensors, meta)
    params = [Parameter(torch.randn(s)) for s in SHAPES]
    opt = Adam(params, lr=0.5)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(tensors, meta)
    assert opt.lr == 0.5 and opt.step_count == 0  # nothing changed


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: SGD(p, lr=-0.1), "learning rate"),
        (lambda p: SGD(p, lr=math.nan), "learning rate"),
        (lambda p: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
        (lambda p: SGD(p, lr=0.1, momentum=1.0), "momentum"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "Nesterov"),
        (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=1), "nesterov"),
        (lambda p: SGD(p, lr=0.1, weight_decay=-1e-4), "weight_decay"),
        (lambda p: Adam(p, lr=-1.0), "learning rate"),
        (lambda p: Adam(p, betas=(1.0, 0.999)), "beta1"),
        (lambda p: Adam(p, betas=(0.9, -0.1)), "beta2"),
        (lambda p: Adam(p, betas=(0.9,)), "betas"),
        (lambda p: Adam(p, eps=-1e-8), "eps"),
        (lambda p: Adam(p, weight_decay=-0.1), "weight_decay"),
        (lambda p: AdamW(p, weight_decay=math.inf), "weight_decay"),
        (lambda p: SGD([], lr=0.1), "empty"),
        (lambda p: SGD([p[0], p[0]], lr=0.1), "twice"),
        (lambda p: SGD([torch.zeros(2, dtype=torch.int64)], lr=0.1), "floating point"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, message) -> None:
    params = [Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=message):
        make(params)


def test_params_must_be_an_iterable_of_tensors() -> None:
    from handgrad.nn.layers import Linear

    with pytest.raises(TypeError, match=r"model.parameters\(\)"):
        SGD(Linear(2, 2), lr=0.1)
    with pytest.raises(TypeError, match="not a tensor"):
        SGD([1.0], lr=0.1)
    with pytest.raises(TypeError):
        SGD([Parameter(torch.zeros(1))], 0.1, 0.9)  # flags are keyword-only


def test_repr_and_registry() -> None:
    opt = AdamW([Parameter(torch.zeros(1))])
    assert "AdamW(1 tensors" in repr(opt) and "weight_decay=0.01" in repr(opt)
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
