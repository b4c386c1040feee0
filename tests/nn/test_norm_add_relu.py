"""``BatchNormAddReLU2d``, the end of a residual block: gradients of both inputs, equality with
``BatchNorm2d`` + add + ``ReLU`` (running statistics and evaluation too), bad input, and the
``ResBlock`` built on it keeping its state-dict names and its PyTorch twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from handgrad.check.cases import batchnorm_add_relu_reference
from handgrad.interop.torch import TorchBatchNormAddReLU2d, from_torch, to_torch
from handgrad.nn.layers import BatchNorm2d, BatchNormAddReLU2d, ReLU, ResBlock

from support import assert_grads, with_random_affine


def r(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64) * scale + shift


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: BatchNormAddReLU2d(3), (4, 3, 2, 2)),
        (lambda: BatchNormAddReLU2d(2), (1, 2, 3, 3)),  # batch 1: statistics over H, W
        (lambda: BatchNormAddReLU2d(4, affine=False), (3, 4, 2, 3)),
        (lambda: BatchNormAddReLU2d(3, track_running_stats=False), (2, 3, 2, 2)),
    ],
)
def test_gradients_of_both_inputs(make, shape) -> None:
    torch.manual_seed(0)
    m = with_random_affine(make())
    x, residual = r(*shape, scale=3.0, shift=2.0), r(*shape, shift=-0.5)
    assert_grads(m, x, residual, reference=batchnorm_add_relu_reference)


def test_equals_batchnorm_then_add_then_relu() -> None:
    torch.manual_seed(1)
    fused = with_random_affine(BatchNormAddReLU2d(4))
    bn, relu = BatchNorm2d(4), ReLU()
    bn.load_state_dict(fused.state_dict())
    x, res, dy = torch.randn(8, 4, 5, 5) * 2 + 0.5, torch.randn(8, 4, 5, 5), torch.randn(8, 4, 5, 5)
    for step in range(3):  # the running statistics move the same way
        y = fused(x + step, res)
        torch.testing.assert_close(y, relu(bn(x + step) + res))
        dx, dres = fused.backward(dy)
        g = relu.backward(dy)
        torch.testing.assert_close(dres, g)
        torch.testing.assert_close(dx, bn.backward(g))
        torch.testing.assert_close(fused.weight.g, bn.weight.g)
        torch.testing.assert_close(fused.bias.g, bn.bias.g)
        fused.zero_grad()
        bn.zero_grad()
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, msg=name)
    fused.eval()
    bn.eval()
    torch.testing.assert_close(fused(x, res), torch.relu(bn(x) + res))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="residual's shape"):
        BatchNormAddReLU2d(3)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        BatchNormAddReLU2d(3)(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


def test_resblock_keeps_its_state_dict_names_and_needs_no_relu_layer() -> None:
    """Checkpoints of blocks built with a separate BatchNorm2d + ReLU load unchanged: the
    state dict of bn2 is a BatchNorm2d's."""
    block = ResBlock(3, 5, 2)
    assert isinstance(block.bn2, BatchNormAddReLU2d)
    assert not any(isinstance(m, ReLU) for m in block.modules())
    names = {k.removeprefix("bn2.") for k in block.state_dict() if k.startswith("bn2.")}
    assert names == set(BatchNorm2d(5).state_dict())


def test_twin_in_pytorch_both_ways() -> None:
    torch.manual_seed(2)
    layer = with_random_affine(BatchNormAddReLU2d(3))
    twin = to_torch(layer)
    assert isinstance(twin, TorchBatchNormAddReLU2d)
    x, res = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(twin(x, res), layer(x, res))
    layer.clear_saved()
    back = from_torch(twin)
    assert isinstance(back, BatchNormAddReLU2d)
    torch.testing.assert_close(back(x, res), layer(x, res))


def test_a_torch_resblock_with_a_plain_batchnorm_converts() -> None:
    """A TorchResBlock whose bn2 is a plain nn.BatchNorm2d (as before the fused layer) gives
    the same numbers, and still becomes a working ResBlock."""
    torch.manual_seed(3)
    block = ResBlock(2, 4, 2)
    for bn in (block.bn1, block.bn2, block.skip_bn):
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    twin = to_torch(block)
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(twin.bn2.state_dict())
    twin.bn2 = plain
    x = torch.randn(3, 2, 6, 6)
    want = block(x)
    block.clear_saved()
    torch.testing.assert_close(twin(x), want)
    back = from_torch(twin)
    assert isinstance(back, ResBlock) and isinstance(back.bn2, BatchNormAddReLU2d)
    torch.testing.assert_close(back(x), want)
