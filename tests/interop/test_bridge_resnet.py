"""The bridge on residual networks: a ``ResBlock`` and the built-in ``resnet`` convert to
``torch.nn`` and back with equal outputs and (through PyTorch's autograd) equal gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import handgrad.interop.torch as hgt
from handgrad.nn.layers import Conv2d, ResBlock
from handgrad.nn.models import build_model


def test_resnet_round_trip_with_trained_statistics() -> None:
    model = build_model("resnet", generator=torch.Generator().manual_seed(0), stem=4,
                        channels=(4, 8), strides=(1, 2), zero_init=False)  # fmt: skip
    x = torch.randn(6, 784, generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # move the running statistics away from their start
        model(x)
    model.clear_saved()
    model.eval()
    tm = hgt.to_torch(model).eval()
    assert isinstance(tm[3], hgt.TorchResBlock) and tm[3].skip_conv is None
    assert isinstance(tm[4].skip_conv, nn.Conv2d)
    assert set(tm.state_dict()) == {
        n.replace("layers.", "") for n in model.state_dict()
    }  # the same names, Sequential's "layers." aside
    torch.testing.assert_close(tm(x).detach(), model(x), rtol=1e-4, atol=1e-5)
    back = hgt.from_torch(tm).eval()
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    assert torch.equal(back(x), model(x))
    # the memory layout travels too: the recipe's channels-last convolutions (the stem's one
    # input channel included) stay channels-last on both sides, and NCHW ones NCHW
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.channels_last for m in convs)
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last) and m.weight.stride(1) == 1
        for m in tm.modules()
        if isinstance(m, nn.Conv2d)
    )
    assert all(m.channels_last for m in back.modules() if isinstance(m, Conv2d))
    nchw = hgt.from_torch(tm.to(memory_format=torch.contiguous_format)).eval()
    assert not any(m.channels_last for m in nchw.modules() if isinstance(m, Conv2d))
    torch.testing.assert_close(nchw(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("c", "o", "stride"), [(3, 3, 1), (2, 4, 2)])
def test_block_gradients_equal_torch_autograd(c: int, o: int, stride: int) -> None:
    """Training mode, float64: PyTorch's autograd through the converted block gives the same
    input and parameter gradients as the hand-written backward."""
    g = torch.Generator().manual_seed(0)
    block = ResBlock(c, o, stride, generator=g).double()
    tm = hgt.to_torch(block).train()
    x = torch.randn(2, c, 6, 6, generator=g, dtype=torch.float64)
    dy = torch.randn(block(x).shape, generator=g, dtype=torch.float64)
    block.clear_saved()
    out = block(x)
    dx = block.backward(dy)
    xt = x.clone().requires_grad_()
    yt = tm(xt)
    torch.testing.assert_close(yt.detach(), out)
    yt.backward(dy)
    torch.testing.assert_close(dx, xt.grad)
    grads = {n: p.grad for n, p in tm.named_parameters()}
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.g, grads[name], msg=name)


def test_from_torch_refuses_a_block_with_the_wrong_skip() -> None:
    tm = hgt.to_torch(ResBlock(3, 3))
    tm.skip_conv, tm.skip_bn = nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3)
    with pytest.raises(TypeError, match="skip path"):
        hgt.from_torch(tm)
