"""The compiled 3x3 gradients (conv3x3.c) against the readable convolution's sums, in float64
arithmetic. The weight gradient over the shapes that stress its blocking: padding 0, 1 and 2,
strides 1-3, output channels around the 16- and 32-wide vector blocks (and their zero-padded
tail), odd input channels (the two-at-a-time tail), one channel, rectangular and tiny images,
batch 1, more threads than rows, non-contiguous inputs. The stride-2 input gradient over odd
and even sides (its four phases), 1-pixel sides, channels around its 8-wide blocks. And where
neither must run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad._build import Build
from handgrad.nn.functional import conv_fast, norm_fast
from handgrad.nn.functional.conv import ConvGeometry, conv2d_backward, conv2d_forward
from handgrad.nn.functional.layout import layout_of, to_layout
from handgrad.nn.layers import Conv2d

needs_build = pytest.mark.skipif(
    not conv_fast.build.status()[0], reason=f"no compiled convolution: {conv_fast.build.failure}"
)


def reference(
    x: torch.Tensor, dout: torch.Tensor, padding: tuple[int, int], stride: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """dW by autograd in float64: the sum the C code must reproduce."""
    w = torch.zeros(dout.shape[1], x.shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    TF.conv2d(x.double(), w, None, stride, padding).backward(dout.double())
    return w.grad


def out_side(size: int, pad: int, stride: int) -> int:
    return (size + 2 * pad - 3) // stride + 1


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 products summed in a different order: a relative error of a few 1e-6 of the
    largest entry; a wrong tap, pixel or channel is off by O(1) of it."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)
    assert err < 2e-5, f"relative error {err:.2e}"


@needs_build
@pytest.mark.parametrize(
    ("n", "c", "o", "h", "w", "pad", "stride"),
    [
        (4, 3, 5, 9, 9, (1, 1), (1, 1)),  # odd input channels; 5 of 16 output lanes used
        (2, 1, 1, 5, 7, (1, 1), (1, 1)),  # one channel each, rectangular
        (3, 4, 2, 6, 5, (0, 0), (1, 1)),  # no padding: Ho = H - 2
        (2, 2, 3, 7, 4, (1, 0), (1, 1)),  # padding on one axis only
        (1, 16, 16, 28, 28, (1, 1), (1, 1)),  # batch 1, the resnet's first block
        (5, 2, 3, 3, 3, (0, 0), (1, 1)),  # a 1x1 output
        (9, 7, 9, 13, 11, (1, 1), (1, 1)),  # many images, odd everything
        (4, 16, 32, 28, 28, (1, 1), (2, 2)),  # the resnet's downsampling conv: 32-wide blocks
        (3, 33, 40, 14, 14, (1, 1), (1, 1)),  # a 32-wide block, then a 16-wide one, 8 lanes used
        (2, 5, 17, 8, 9, (2, 1), (2, 1)),  # padding 2, stride on one axis, 1 lane of the tail
        (3, 64, 48, 7, 7, (1, 1), (1, 1)),  # deep layers: few positions, many channels
        (2, 3, 48, 11, 10, (1, 1), (3, 2)),  # stride 3: windows skip rows of x
        # channels-last with a multiple of 8 input channels takes the tap kernels on x itself:
        (2, 8, 16, 9, 7, (2, 1), (3, 2)),  # padding 2: taps past both edges; stride 3 rows
        (2, 24, 32, 5, 6, (0, 0), (1, 1)),  # no padding; 8 + 16 channels
        (3, 8, 16, 1, 1, (1, 1), (1, 1)),  # one pixel: only the centre tap is inside
        (2, 16, 40, 2, 3, (2, 2), (2, 2)),  # tiny image, big padding, a 16-wide tail of o
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_weight_gradient_equals_the_sum(n, c, o, h, w, pad, stride, threads, layout) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c * 100 + o)
    x = torch.randn(n, c, h, w, generator=gen)
    ho, wo = out_side(h, pad[0], stride[0]), out_side(w, pad[1], stride[1])
    dout = torch.randn(n, o, ho, wo, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, dout = to_layout(x, layout), to_layout(dout, layout)
        got = conv_fast.conv3x3_weight_grad(x, dout, pad, stride)
    finally:
        torch.set_num_threads(before)
    assert got is not None
    close(got, reference(x, dout, pad, stride))


@needs_build
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.sampled_from([*range(1, 21), 8, 16, 24, 32]),
    st.sampled_from([*range(1, 40), 16, 32, 32]),
    st.integers(3, 12), st.integers(3, 12), st.sampled_from([(0, 0), (1, 1), (0, 1), (2, 1)]),
    st.sampled_from([(1, 1), (2, 2), (1, 2)]), st.integers(0, 2**16),
)  # fmt: skip
def test_weight_gradient_on_random_shapes(n, c, o, h, w, pad, stride, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    ho, wo = out_side(h, pad[0], stride[0]), out_side(w, pad[1], stride[1])
    dout = torch.randn(n, o, ho, wo, generator=gen)
    if seed % 2:  # half the shapes channels-last (o = 16 or 32: dy read in place)
        x, dout = to_layout(x, "nhwc"), to_layout(dout, "nhwc")
    got = conv_fast.conv3x3_weight_grad(x, dout, pad, stride)
    assert got is not None
    close(got, reference(x, dout, pad, stride))


@needs_build
def test_channels_last_gradient_at_an_unaligned_address() -> None:
    """A channels-last dy with 16 output channels is read in place when 64-byte aligned; a
    view 4 floats into a buffer is not, and must be copied (an aligned vector load of it
    would fault or read the wrong floats)."""
    gen = torch.Generator().manual_seed(3)
    x = to_layout(torch.randn(2, 3, 6, 6, generator=gen), "nhwc")
    base = torch.randn(2 * 16 * 36 + 4, generator=gen)[4:]  # 16 bytes past an aligned start
    dout = base.as_strided((2, 16, 6, 6), (16 * 36, 1, 16 * 6, 16))  # channels-last strides
    assert dout.data_ptr() % 64 and layout_of(dout) == "nhwc"
    close(conv_fast.conv3x3_weight_grad(x, dout, (1, 1)), reference(x, dout, (1, 1)))


@needs_build
def test_non_contiguous_inputs_and_a_reused_workspace() -> None:
    """Views are copied first; a smaller call after a larger one reuses its workspace, whose
    stale grid must not leak into the sums."""
    gen = torch.Generator().manual_seed(1)
    big_x, big_dy = (
        torch.randn(6, 5, 12, 12, generator=gen),
        torch.randn(6, 4, 12, 12, generator=gen),
    )
    close(conv_fast.conv3x3_weight_grad(big_x, big_dy, (1, 1)), reference(big_x, big_dy, (1, 1)))
    x = torch.randn(2, 8, 9, 6, generator=gen).transpose(2, 3)[:, ::2]  # (2, 4, 6, 9), strided
    dout = torch.randn(2, 3, 7, 4, generator=gen).transpose(2, 3)  # (2, 3, 4, 7)
    close(conv_fast.conv3x3_weight_grad(x, dout, (0, 0)), reference(x, dout, (0, 0)))


def test_applies_only_where_the_c_code_computes_the_same_sum() -> None:
    x, dy = torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 8, 8)
    ok = dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    assert conv_fast.applies(x, dy, **ok)
    assert conv_fast.applies(x, torch.zeros(2, 4, 4, 4), **{**ok, "stride": (2, 2)})
    assert conv_fast.applies(x, torch.zeros(2, 4, 10, 8), **{**ok, "padding": (2, 1)})
    for bad in (
        dict(kernel=(5, 5), padding=(2, 2)),
        dict(dilation=(2, 2), padding=(2, 2)),
        dict(groups=3),
        dict(stride=(2, 2)),  # stride 2 is fine, but dy (8x8) is not its output's shape
    ):
        assert not conv_fast.applies(x, dy, **{**ok, **bad}), bad
    # padding 3: dy has the right shape (12x12), but the C code is not written for it
    assert not conv_fast.applies(x, torch.zeros(2, 4, 12, 12), **{**ok, "padding": (3, 3)})
    assert not conv_fast.applies(x.double(), dy.double(), **ok)  # float64 runs the readable sum
    assert not conv_fast.applies(x, torch.zeros(2, 4, 7, 8), **ok)  # not this conv's gradient


def test_no_compiler_means_the_readable_sum(monkeypatch, tmp_path) -> None:
    """Where the C file cannot be built, the direct method's weight gradient is unchanged."""
    monkeypatch.setattr(conv_fast, "build", Build(conv_fast._SOURCE, conv_fast._load))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert (
        conv_fast.conv3x3_weight_grad(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), (1, 1))
        is None
    )
    assert (
        conv_fast.conv3x3_input_grad_s2(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3), (4, 4))
        is None
    )
    assert "conv3x3.c" in str(conv_fast.build.failure)
    x, dy = torch.randn(2, 3, 20, 20), torch.randn(2, 4, 20, 20)
    geometry = ConvGeometry((3, 3), padding=(1, 1))
    _, cache = conv2d_forward(x, torch.randn(4, 3, 3, 3), None, geometry, method="direct")
    close(conv2d_backward(dy, cache)[1], reference(x, dy, (1, 1)))
    w, dy = torch.randn(4, 3, 3, 3), torch.randn(2, 4, 10, 10)
    _, cache = conv2d_forward(x, w, None, ConvGeometry((3, 3), (2, 2), (1, 1)), method="direct")
    close(conv2d_backward(dy, cache)[0], input_reference(dy, w, (20, 20)))


@needs_build
def test_the_layer_uses_it_and_agrees_with_autograd(monkeypatch) -> None:
    """A direct-method Conv2d with a 3x3 kernel takes the compiled weight gradient at every
    stride, and the compiled input gradient at stride 2; a 5x5 one takes neither. Its
    gradients equal autograd's. Counting the calls makes sure the test exercises the C code."""
    calls: list[int] = []
    dx_calls: list[int] = []
    real, real_dx = conv_fast.conv3x3_weight_grad, conv_fast.conv3x3_input_grad_s2
    monkeypatch.setattr(conv_fast, "conv3x3_weight_grad", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(
        conv_fast, "conv3x3_input_grad_s2", lambda *a: dx_calls.append(1) or real_dx(*a)
    )
    torch.manual_seed(0)
    for k, stride, side, expected_calls in ((3, 1, 28, 1), (3, 2, 14, 1), (5, 1, 9, 0)):
        calls.clear()
        dx_calls.clear()
        conv = Conv2d(8, 8, k, stride, padding=k // 2, bias=False, method="direct")
        x = torch.randn(4, 8, side, side)
        xr, w = x.clone().requires_grad_(), conv.weight.detach().clone().requires_grad_()
        ref = TF.conv2d(xr, w, None, stride, k // 2)
        dout = torch.randn_like(ref)
        ref.backward(dout)
        conv(x)
        dx = conv.backward(dout)
        assert len(calls) == expected_calls
        assert len(dx_calls) == (stride == 2)  # the input gradient: stride 2 only
        torch.testing.assert_close(dx, xr.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(conv.weight.g, w.grad, rtol=1e-4, atol=1e-3)
    # channels-last: the weight gradient reads it in place; the stride-2 input gradient is
    # oneDNN's (as fast there), and dx stays channels-last
    calls.clear()
    dx_calls.clear()
    conv = Conv2d(8, 8, 3, 2, padding=1, bias=False, channels_last=True)
    x = torch.randn(4, 8, 14, 14)
    xr, w = x.clone().requires_grad_(), conv.weight.detach().clone().requires_grad_()
    ref = TF.conv2d(xr, w, None, 2, 1)
    dout = to_layout(torch.randn_like(ref), "nhwc")
    ref.backward(dout)
    conv(x)
    dx = conv.backward(dout)
    assert (len(calls), len(dx_calls), layout_of(dx)) == (1, 0, "nhwc")
    torch.testing.assert_close(dx, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.g, w.grad, rtol=1e-4, atol=1e-3)


@needs_build
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_compiled_kernels_run_on_torchs_own_openmp_threads() -> None:
    """Both C libraries split their work with OpenMP, and the loader must resolve their
    libgomp to the copy torch loaded: one team of threads. A second runtime (or threads of
    their own) would spin against torch's threads on the same cores (docs/performance.md)."""
    libs = [conv_fast.build.get(), norm_fast.build.get()]
    for lib in libs:
        assert lib is not None
        # dlsym on the library's handle searches it and its dependencies only
        assert hasattr(lib, "omp_get_thread_num"), "built without OpenMP"
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"


# ------------------------------------------------------------ input gradient, stride 2
def input_reference(dout: torch.Tensor, w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """dx of a 3x3, stride-2, padding-1 convolution by autograd in float64."""
    x = torch.zeros(dout.shape[0], w.shape[1], *size, dtype=torch.float64, requires_grad=True)
    TF.conv2d(x, w.double(), None, 2, 1).backward(dout.double())
    return x.grad


def input_grad(dout: torch.Tensor, w: torch.Tensor, size: tuple[int, int], threads: int = 0):
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return conv_fast.conv3x3_input_grad_s2(dout, w, size)
    finally:
        torch.set_num_threads(before)


@needs_build
@pytest.mark.parametrize(
    ("n", "c", "o", "h", "w"),
    [
        (3, 16, 32, 28, 28),  # the resnet's first downsampling conv: even sides
        (2, 32, 64, 14, 14),
        (2, 64, 128, 7, 7),  # odd sides: the odd phases have one row and column fewer
        (2, 9, 5, 9, 8),  # one 8-wide block of channels and a 1-wide tail; rectangular
        (3, 7, 3, 5, 6),  # fewer channels than a block
        (1, 1, 1, 1, 1),  # one pixel: only the even phase exists
        (2, 2, 3, 1, 6),  # a one-row image
        (2, 17, 4, 2, 2),  # 2x2 -> 1x1: each phase is one pixel
        (4, 8, 16, 3, 13),  # many blocks of positions cross image borders
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_input_gradient_equals_the_transposed_convolution(n, c, o, h, w, threads) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c * 100 + o + h)
    weight = torch.randn(o, c, 3, 3, generator=gen)
    dout = torch.randn(n, o, (h + 1) // 2, (w + 1) // 2, generator=gen)
    got = input_grad(dout, weight, (h, w), threads)
    assert got is not None and got.shape == (n, c, h, w)
    close(got, input_reference(dout, weight, (h, w)))


@needs_build
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 20), st.integers(1, 20), st.integers(1, 16),
    st.integers(1, 16), st.integers(0, 2**16),
)  # fmt: skip
def test_input_gradient_on_random_shapes(n, c, o, h, w, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(o, c, 3, 3, generator=gen)
    dout = torch.randn(n, o, (h + 1) // 2, (w + 1) // 2, generator=gen)
    got = input_grad(dout, weight, (h, w))
    assert got is not None
    close(got, input_reference(dout, weight, (h, w)))


@needs_build
def test_input_gradient_of_views_after_a_larger_call() -> None:
    """Strided views are copied first; the workspace of a larger call (its grid of dy and its
    weights) is reused by a smaller one, and nothing stale may leak into it."""
    gen = torch.Generator().manual_seed(2)
    big_w, big_dy = (
        torch.randn(24, 12, 3, 3, generator=gen),
        torch.randn(5, 24, 9, 9, generator=gen),
    )
    close(input_grad(big_dy, big_w, (18, 18)), input_reference(big_dy, big_w, (18, 18)))
    w = torch.randn(3, 10, 3, 3, generator=gen)[:, ::2]  # (3, 5, 3, 3), strided
    dout = torch.randn(2, 3, 6, 4, generator=gen).transpose(2, 3)  # (2, 3, 4, 6)
    close(input_grad(dout, w, (7, 12)), input_reference(dout, w, (7, 12)))


def test_input_gradient_applies_only_to_stride_2_padding_1() -> None:
    dy, w = torch.zeros(2, 4, 4, 4), torch.zeros(4, 3, 3, 3)
    ok = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1)
    assert conv_fast.applies_input_grad_s2(dy, w, (8, 8), **ok)
    assert conv_fast.applies_input_grad_s2(dy, w, (7, 7), **ok)  # odd sides: ceil(7 / 2) = 4
    for bad in (
        dict(stride=(1, 1)),
        dict(stride=(2, 1)),
        dict(padding=(0, 0)),
        dict(dilation=(2, 2)),
        dict(groups=2),
    ):
        assert not conv_fast.applies_input_grad_s2(dy, w, (8, 8), **{**ok, **bad}), bad
    assert not conv_fast.applies_input_grad_s2(dy, w, (9, 8), **ok)  # dy is not its output
    assert not conv_fast.applies_input_grad_s2(dy, torch.zeros(4, 3, 5, 5), (8, 8), **ok)
    assert not conv_fast.applies_input_grad_s2(dy, torch.zeros(5, 3, 3, 3), (8, 8), **ok)
    assert not conv_fast.applies_input_grad_s2(dy.double(), w.double(), (8, 8), **ok)
    wide = conv_fast.INPUT_GRAD_MAX_CHANNELS + 1  # where PyTorch's own kernel is as fast
    assert not conv_fast.applies_input_grad_s2(dy, torch.zeros(4, wide, 3, 3), (8, 8), **ok)
