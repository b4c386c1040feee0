"""Conv2d: forward against torch.nn.functional.conv2d, hand gradients against autograd and
finite differences, for both methods, over strides, paddings, dilations, groups and batch 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.check.cases import conv_reference
from handgrad.nn import functional as F
from handgrad.nn.functional.conv import ConvGeometry, col2im, im2col, pick_method
from handgrad.nn.functional.layout import layout_of, to_layout
from handgrad.nn.layers import Conv2d

from support import assert_grads


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine thread hand-offs cost
    more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# (in, out, kernel, stride, padding, dilation, groups, bias), input shape
GEOMETRIES = [
    ((3, 4, 3, 1, 1, 1, 1, True), (2, 3, 5, 5)),
    ((3, 4, 3, 1, 1, 1, 1, True), (1, 3, 5, 5)),  # batch 1
    ((1, 2, 3, 1, 0, 1, 1, True), (3, 1, 4, 4)),  # no padding, one input channel
    ((2, 3, 3, 2, 1, 1, 1, True), (2, 2, 6, 6)),  # stride 2
    ((2, 3, 3, 2, 1, 1, 1, False), (1, 2, 7, 7)),  # stride 2, odd size, no bias
    ((2, 2, 3, 3, 2, 1, 1, True), (2, 2, 7, 6)),  # stride 3, padding 2, non-square input
    ((2, 3, 3, 1, 2, 2, 1, True), (2, 2, 5, 5)),  # dilation 2
    ((4, 6, 3, 1, 1, 1, 2, True), (2, 4, 4, 4)),  # groups 2
    ((4, 4, 3, 1, 1, 1, 4, False), (1, 4, 4, 5)),  # depthwise
    ((3, 2, (3, 2), (2, 1), (1, 0), (1, 2), 1, True), (2, 3, 6, 7)),  # rectangular everything
    ((2, 5, 1, 1, 0, 1, 1, True), (2, 2, 3, 3)),  # 1x1
    ((2, 3, 5, 2, 2, 1, 1, True), (1, 2, 8, 8)),  # 5x5 kernel
]


def make(spec, method: str, **kw) -> Conv2d:
    i, o, k, s, p, d, g, b = spec
    return Conv2d(i, o, k, s, p, d, g, bias=b, method=method, **kw)


@pytest.mark.parametrize("method", ["im2col", "direct"])
@pytest.mark.parametrize(("spec", "shape"), GEOMETRIES, ids=[str(g[1]) for g in GEOMETRIES])
def test_conv_gradients(spec, shape, method) -> None:
    torch.manual_seed(0)
    assert_grads(make(spec, method), r(*shape), reference=conv_reference)


@pytest.mark.parametrize("method", ["auto", "im2col"])
@pytest.mark.parametrize(("spec", "shape"), GEOMETRIES, ids=[str(g[1]) for g in GEOMETRIES])
def test_conv_gradients_channels_last(spec, shape, method) -> None:
    torch.manual_seed(0)
    conv = make(spec, method, channels_last=True)
    assert layout_of(conv(r(*shape).float())) == "nhwc"
    assert_grads(conv, r(*shape), reference=conv_reference)


def test_conv_gradients_without_kept_columns() -> None:
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, stride=2, padding=1, method="im2col", keep_cols=False)
    assert_grads(conv, r(2, 3, 6, 6), reference=conv_reference)


@pytest.mark.parametrize(
    ("method", "channels_last"),
    [("im2col", False), ("direct", False), ("auto", False), ("auto", True), ("im2col", True)],
)
def test_conv_float32_forward_and_backward_match_torch(method: str, channels_last: bool) -> None:
    """The dtype a user trains in, at the cnn recipe's second layer shape."""
    torch.manual_seed(0)
    conv = Conv2d(16, 32, 3, stride=2, padding=1, method=method, channels_last=channels_last)
    x = torch.randn(8, 16, 28, 28)
    xr = x.clone().requires_grad_(True)
    w = conv.weight.detach().clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    ref = TF.conv2d(xr, w, b, 2, 1)
    dout = to_layout(torch.randn_like(ref), "nhwc" if channels_last else "nchw")
    ref.backward(dout)
    out = conv(x)
    dx = conv.backward(dout)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.g, w.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(conv.bias.g, b.grad, rtol=1e-4, atol=1e-3)
    assert layout_of(out) == ("nhwc" if channels_last else "nchw")
    if channels_last and method != "im2col":  # direct runs on channels-last memory throughout
        assert layout_of(dx) == "nhwc"
    assert conv.weight.g.is_contiguous()  # the parameter's own layout, as the optimizers expect


def test_first_layer_skips_the_input_gradient() -> None:
    conv = Conv2d(1, 4, 3, padding=1)
    conv(torch.randn(2, 1, 6, 6))
    assert conv.backward(torch.randn(2, 4, 6, 6), need_input_grad=False) is None
    assert conv.weight.g is not None


def test_auto_method_lowers_short_patches_only() -> None:
    assert pick_method("auto", torch.zeros(16, 1, 3, 3)) == "im2col"  # 9 values per patch
    assert pick_method("auto", torch.zeros(32, 16, 3, 3)) == "direct"  # 144 values
    assert pick_method("direct", torch.zeros(16, 1, 3, 3)) == "direct"
    with pytest.raises(ValueError, match="unknown convolution method"):
        pick_method("fft", torch.zeros(1, 1, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 3, "out_channels": 4, "kernel_size": 3, "groups": 2}, "divisible"),
        ({"in_channels": 0, "out_channels": 4, "kernel_size": 3}, "positive"),
        ({"in_channels": 1, "out_channels": 1, "kernel_size": 0}, "kernel_size"),
        ({"in_channels": 1, "out_channels": 1, "kernel_size": 3, "stride": 0}, "stride"),
        ({"in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding": -1}, "padding"),
        ({"in_channels": 1, "out_channels": 1, "kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"in_channels": 1, "out_channels": 1, "kernel_size": 3, "method": "fft"}, "method"),
    ],
)
def test_bad_arguments_raise(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Conv2d(**kwargs)


def test_bad_inputs_raise_naming_the_layer() -> None:
    conv = Conv2d(3, 4, 5)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 4.*expected input \(N, 3, H, W\)"):
        conv(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="smaller than the"):
        conv(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="expected input"):
        conv(torch.randn(3, 8, 8))


def test_repr_shows_the_non_default_geometry() -> None:
    text = repr(Conv2d(2, 4, 3, stride=2, padding=1, bias=False))
    assert text == "Conv2d(2, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"


# ------------------------------------------------------------------------ property tests
@st.composite
def conv_problem(draw):
    g = draw(st.sampled_from([1, 2]))
    cin, cout = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(d[0] * (kh - 1) + 1, 9))
    w = draw(st.integers(d[1] * (kw - 1) + 1, 9))
    n = draw(st.integers(1, 3))
    geo = ConvGeometry((kh, kw), s, p, d, g)
    seed = draw(st.integers(0, 2**16))
    return n, cin, cout, h, w, geo, seed


@settings(max_examples=60, deadline=None)
@given(
    conv_problem(),
    st.sampled_from([("im2col", False), ("direct", False), ("direct", True), ("im2col", True)]),
)
def test_conv_matches_autograd_on_random_geometries(problem, how) -> None:
    method, channels_last = how
    n, cin, cout, h, w, geo, seed = problem
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, cin // geo.groups, *geo.kernel, generator=gen, dtype=torch.float64)
    weight.requires_grad_(True)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = TF.conv2d(x, weight, bias, geo.stride, geo.padding, geo.dilation, geo.groups)
    dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(dout)
    out, cache = F.conv2d_forward(
        x.detach(), weight.detach(), bias.detach(), geo, method=method,
        channels_last=channels_last,
    )  # fmt: skip
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        dout = to_layout(dout, "nhwc")  # as the next channels-last layer would hand it back
    dx, dw, db = F.conv2d_backward(dout, cache)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dw, weight.grad)
    torch.testing.assert_close(db, bias.grad)


@settings(max_examples=40, deadline=None)
@given(conv_problem())
def test_col2im_is_the_adjoint_of_im2col(problem) -> None:
    """<im2col(x), c> == <x, col2im(c)> for every x and c: the backward of the copy is the
    scatter-add, which is what makes dx correct."""
    n, cin, _, h, w, geo, seed = problem
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    cols = im2col(x, geo)
    c = torch.randn(cols.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((cols * c).sum(), (x * col2im(c, (h, w), geo)).sum())
    unfold = TF.unfold(x, geo.kernel, geo.dilation, geo.padding, geo.stride)
    torch.testing.assert_close(cols, unfold)


@pytest.mark.parametrize(
    ("h", "w", "stride", "dilation", "groups"),
    [(28, 28, (2, 2), (1, 1), 1), (7, 7, (2, 2), (1, 1), 1), (9, 8, (3, 2), (2, 1), 2),
     (5, 6, (1, 1), (1, 1), 1), (1, 4, (2, 3), (1, 1), 1)],
)  # fmt: skip
def test_col2im_of_a_1x1_kernel_is_the_strided_write_fold_computes(h, w, stride, dilation, groups):
    """The 1x1 shortcut (no padding) against ``fold``, the general scatter-add."""
    geo = ConvGeometry((1, 1), stride, (0, 0), dilation, groups)
    ho, wo = geo.output_size(h, w)
    cols = torch.randn(3, 4, ho * wo, dtype=torch.float64)
    want = TF.fold(cols, (h, w), (1, 1), dilation=dilation, stride=stride)
    torch.testing.assert_close(col2im(cols, (h, w), geo), want, rtol=0, atol=0)
