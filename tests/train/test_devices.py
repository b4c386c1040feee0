"""Devices: ``resolve_device`` and every built-in case on cpu, meta (no host syncs) and cuda."""

from __future__ import annotations

import pytest
import torch

from handgrad.check.cases import CASES
from handgrad.errors import HandgradError
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import CrossEntropyLoss, MSELoss
from handgrad.nn.module import Module, Sequential
from handgrad.optim.optimizers import SGD, Adam, AdamW
from handgrad.train.devices import available_devices, resolve_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_the_best_available() -> None:
    assert resolve_device("auto") == torch.device(available_devices()[0])
    assert resolve_device(None) == resolve_device("auto")
    assert available_devices()[-1] == "cpu"


@pytest.mark.parametrize("name", ["cpu", " CPU ", torch.device("cpu")])
def test_cpu_names(name) -> None:
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_missing_is_a_one_line_error() -> None:
    with pytest.raises(HandgradError, match=r"no CUDA GPU .* use one of: .*cpu") as exc:
        resolve_device("cuda")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x"])
def test_unknown_device_names(name: str) -> None:
    with pytest.raises(HandgradError, match="--device"):
        resolve_device(name)


@CUDA
def test_cuda_index_out_of_range() -> None:
    with pytest.raises(HandgradError, match="numbered 0 to"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def prepare(case, device: str, dtype: torch.dtype = torch.float64):
    """A built-in case's module and inputs, moved to ``device`` (copies from the host)."""
    g = torch.Generator().manual_seed(0)
    module = case.make(g).to(device=device, dtype=dtype).train()
    inputs = [x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
              for x in case.inputs(g)]  # fmt: skip
    return module, inputs


def step(module, inputs):
    """Forward and backward: the output and the input gradients (param grads are in ``.g``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = module(*inputs)
    grads = module.backward(torch.ones_like(out))
    return out, grads if isinstance(grads, tuple) else (grads,)


def run_case(case, device: str):
    module, inputs = prepare(case, device)
    return module, *step(module, inputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_host_sync_in_forward_or_backward(case) -> None:
    """On the meta device a tensor has no values, so ``.item()``, ``bool(t)``, ``.tolist()``
    fail: a layer that passes here never makes a GPU wait for the host."""
    try:
        module, out, grads = run_case(case, "meta")
    except NotImplementedError as exc:  # an op without a meta kernel: not a sync, skip it
        pytest.skip(f"{case.name}: an operation has no meta kernel ({exc})")
    assert out.device.type == "meta"
    assert all(gr is None or gr.device.type == "meta" for gr in grads)
    assert all(p.g is not None and p.g.device.type == "meta" for p in module.parameters())


def test_training_step_has_no_host_sync() -> None:
    """A whole step (forward, loss, backward, SGD update) on meta tensors."""
    model = Sequential(Linear(8, 4), ReLU(), Linear(4, 1)).to("meta")
    loss_fn = MSELoss()
    x, y = torch.randn(16, 8, device="meta"), torch.randn(16, device="meta")
    for _ in range(2):
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0], need_input_grad=False)
        for p in model.parameters():
            p.data.sub_(0.1 * p.g)
        model.zero_grad()
    assert loss.device.type == "meta"


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SGD(ps, 0.1),
        lambda ps: SGD(ps, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda ps: Adam(ps, 1e-3, weight_decay=1e-4),
        lambda ps: AdamW(ps, 1e-3),
    ],
    ids=["SGD", "SGD nesterov", "Adam", "AdamW"],
)
def test_optimizer_step_has_no_host_sync(make) -> None:
    model = Sequential(Linear(8, 4), ReLU(), Linear(4, 3)).to("meta")
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    opt = make(model.parameters())
    x, y = torch.randn(16, 8, device="meta"), torch.zeros(16, dtype=torch.int64, device="meta")
    for _ in range(3):
        loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0], need_input_grad=False)
        opt.step()
        opt.zero_grad()
    assert all(p.device.type == "meta" for p in model.parameters())


def test_module_to_keeps_parameter_objects() -> None:
    """Moving in place: an optimizer created before ``.to()`` still holds the parameters."""
    model: Module = Sequential(Linear(3, 2))
    before = [id(p) for p in model.parameters()]
    model.to("meta")
    assert [id(p) for p in model.parameters()] == before
    assert all(p.device.type == "meta" for p in model.parameters())


def same_uniforms_everywhere(*shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """``torch.rand``'s stand-in: frac(i * golden ratio), in [0, 1), the same on every device."""
    size = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
    n = torch.Size(size).numel()
    return (
        (torch.arange(n, device=device, dtype=torch.float64) * 0.6180339887498949)
        .frac()
        .to(dtype or torch.get_default_dtype())
        .view(size)
    )


@CUDA
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_on_cuda_matches_cpu(case, monkeypatch) -> None:
    """Same numbers on the GPU, everything on the GPU, and no synchronisation on the way
    (``set_sync_debug_mode("error")`` raises on any blocking host-device call).

    One seed gives different numbers on the CPU's and the GPU's generators, so Dropout would
    draw different masks; ``torch.rand`` is replaced here by one fixed sequence, computed on
    whichever device asks."""
    monkeypatch.setattr(torch, "rand", same_uniforms_everywhere)
    module, inputs = prepare(case, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, grads = step(module, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_module, cpu_out, cpu_grads = run_case(case, "cpu")
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu_out)
    for a, b in zip(grads, cpu_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.cpu(), b)
    for p, q in zip(module.parameters(), cpu_module.parameters(), strict=True):
        torch.testing.assert_close(p.g.cpu(), q.g)
