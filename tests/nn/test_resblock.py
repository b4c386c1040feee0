"""``ResBlock`` and the ``resnet`` model: gradients in float64 against autograd and finite
differences, the two paths' gradients summed, init, shapes, and the summary's multiply-adds."""

from __future__ import annotations

import pytest
import torch

from handgrad.check.cases import resblock, resblock_reference
from handgrad.nn.functional.layout import layout_of
from handgrad.nn.layers import Conv2d, Linear, ResBlock
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.nn.module import Sequential

from support import assert_grads


@pytest.mark.parametrize(
    ("c", "o", "stride", "shape"),
    [(3, 3, 1, (2, 3, 5, 5)), (2, 4, 2, (2, 2, 6, 6)), (2, 3, 1, (1, 2, 4, 4)),
     (2, 2, 2, (3, 2, 5, 5))],
)  # fmt: skip
def test_resblock_gradients(gen, c, o, stride, shape) -> None:
    block = resblock(c, o, stride)(gen)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_grads(block, x, reference=resblock_reference)


def test_input_gradient_is_the_sum_of_both_paths(gen) -> None:
    """dx equals the main path's contribution plus the skip path's, each computed apart."""
    block = resblock(2, 3, 2)(gen).double()
    x = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    out = block(x.detach())
    dx = block.backward(dy)
    y = resblock_reference(block, x)
    g = torch.autograd.grad(y, y, dy, retain_graph=True)[0] * (y > 0)  # through the last ReLU
    main = resblock_reference_main(block, x)
    skip = resblock_reference_skip(block, x)
    (d_main,) = torch.autograd.grad(main, x, g, retain_graph=True)
    (d_skip,) = torch.autograd.grad(skip, x, g)
    torch.testing.assert_close(out, y.detach())
    torch.testing.assert_close(dx, d_main + d_skip)
    assert d_main.abs().sum() > 0 and d_skip.abs().sum() > 0  # both paths contribute


@pytest.mark.parametrize(
    "skip",
    [
        lambda g: Conv2d(2, 3, 1, 2, bias=False, generator=g),  # pointwise: added in place
        lambda g: Conv2d(2, 3, 3, 2, 1, bias=False, generator=g),  # any other: a full dx
        lambda g: Conv2d(2, 3, 1, 2, bias=False, channels_last=True, generator=g),
    ],
)
def test_every_projection_adds_its_input_gradient(gen, skip) -> None:
    """The block adds a 1x1 projection's input gradient straight into the main path's pixels
    and any other projection's (a foreign model's, through the bridge) as a whole tensor:
    both equal autograd's, on NCHW and channels-last tensors."""
    block = resblock(2, 3, 2)(gen)
    block.skip_conv = skip(gen)
    assert_grads(block.double(), torch.randn(2, 2, 7, 7, generator=gen, dtype=torch.float64),
                 reference=resblock_reference)  # fmt: skip


def resblock_reference_main(m: ResBlock, x: torch.Tensor) -> torch.Tensor:
    from handgrad.check.cases import batchnorm_reference, batchnorm_relu_reference, conv_reference

    h = batchnorm_relu_reference(m.bn1, conv_reference(m.conv1, x))
    return batchnorm_reference(m.bn2, conv_reference(m.conv2, h))


def resblock_reference_skip(m: ResBlock, x: torch.Tensor) -> torch.Tensor:
    from handgrad.check.cases import batchnorm_reference, conv_reference

    return batchnorm_reference(m.skip_bn, conv_reference(m.skip_conv, x))


def test_no_input_gradient_when_not_needed(gen) -> None:
    block = ResBlock(2, 2, generator=gen)
    block(torch.randn(2, 2, 4, 4, generator=gen))
    assert block.backward(torch.randn(2, 2, 4, 4, generator=gen), need_input_grad=False) is None
    assert all(p.g is not None for p in block.parameters())
    assert all(m.pending == 0 for m in block.modules())


def test_identity_and_projection_skip_and_shapes(gen) -> None:
    same = ResBlock(4, 4, generator=gen)
    assert same.skip_conv is None and same.skip_bn is None
    down = ResBlock(4, 8, stride=2, generator=gen)
    assert down.skip_conv.geometry.kernel == (1, 1) and down.skip_conv.geometry.stride == (2, 2)
    assert down(torch.randn(3, 4, 7, 7, generator=gen)).shape == (3, 8, 4, 4)
    assert repr(down).startswith("ResBlock(\n  4, 8, stride=2")
    with pytest.raises(ValueError, match="positive channels"):
        ResBlock(0, 4)


def test_zero_init_starts_as_the_skip_path(gen) -> None:
    """With the second batch norm's gamma at 0 the main path adds only beta (0): the block is
    relu(x), its skip path, at initialisation."""
    block = ResBlock(3, 3, zero_init=True, generator=gen)
    assert torch.equal(block.bn2.weight, torch.zeros(3))
    x = torch.randn(2, 3, 5, 5, generator=gen)
    torch.testing.assert_close(block(x), x.relu())
    assert torch.equal(ResBlock(3, 3).bn2.weight, torch.ones(3))


def test_resnet_model_shapes_and_errors(gen) -> None:
    model = build_model("resnet", generator=gen)
    assert model(torch.randn(2, 784, generator=gen)).shape == (2, 10)
    assert sum(isinstance(m, ResBlock) for m in model.modules()) == 4
    with pytest.raises(ValueError, match="not a square image"):
        build_model("resnet", in_features=30)
    with pytest.raises(ValueError, match="one stride per block"):
        build_model("resnet", channels=(8, 16), strides=(1,))


def test_resnet_model_gradients(gen) -> None:
    model = build_model("resnet", in_features=36, stem=2, channels=(2, 3), strides=(1, 2),
                        dropout=0.0, zero_init=False, generator=gen)  # fmt: skip
    assert_grads(model, torch.randn(3, 36, generator=gen, dtype=torch.float64))


def test_summary_counts_multiply_adds() -> None:
    """One output value of a product layer is a dot product of its fan-in: Linear(5, 3) on one
    example is 15 multiply-adds, Conv2d(2, 4, 3, padding=1) on 6x6 is 4*36 outputs of 18."""
    s = Sequential(Linear(5, 3)).summary((5,))
    assert s.total_macs == 15
    c = Sequential(Conv2d(2, 4, 3, padding=1)).summary((2, 6, 6))
    assert c.total_macs == 4 * 36 * 18
    assert str(c).splitlines()[-2].startswith("2,592 multiply-adds per example")
    r = build_model("resnet").summary((784,))
    assert 12_000_000 < r.total_macs < 14_000_000  # the figure the resnet docstring states
    assert str(r).splitlines()[-2].startswith("13.0 million multiply-adds")
    blocks = [row for row in r.rows if row.kind == "ResBlock"]
    assert sum(b.macs for b in blocks) < r.total_macs  # the stem and the head add theirs


def test_resnet_channels_last_keeps_its_layout_and_its_numbers() -> None:
    """The recipe's channels-last resnet computes what the NCHW one does (float32 training:
    the compiled kernels), and every 4-d activation after the stem stays channels-last: a
    layer that silently handed back NCHW would cost a copy per layer (or ATen's slower batch
    norm) and nothing else would show it."""
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))
    results, layouts = [], []
    for channels_last in (False, True):
        model = build_model("resnet", dropout=0.0, zero_init=False, channels_last=channels_last,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        seen: list[str | None] = []

        def recording(forward, seen=seen):
            def run(*args):
                out = forward(*args)
                seen.append(layout_of(out))
                return out

            return run

        for m in model.modules():
            if isinstance(m, (Conv2d, ResBlock)) or "BatchNorm" in type(m).__name__:
                m.forward = recording(m.forward)
        loss = CrossEntropyLoss()
        value = loss(model(x), y)
        model.backward(loss.backward()[0])
        results.append((value, [p.g.clone() for p in model.parameters()]))
        layouts.append(seen)
    assert set(layouts[0]) == {"nchw"} and set(layouts[1]) == {"nhwc"}
    torch.testing.assert_close(results[1][0], results[0][0])
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
