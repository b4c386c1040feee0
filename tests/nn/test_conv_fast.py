"""The compiled 3x3 weight gradient (conv_wgrad.c) against the readable convolution's sum, in
float64 arithmetic, over the shapes that stress its blocking: padding 0, 1 and 2, strides 1-3,
output channels around the 16- and 32-wide vector blocks (and their zero-padded tail), odd
input channels (the two-at-a-time tail), one channel, rectangular and tiny images, batch 1,
more threads than rows, non-contiguous inputs; and where it must not run."""

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
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_weight_gradient_equals_the_sum(n, c, o, h, w, pad, stride, threads) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c * 100 + o)
    x = torch.randn(n, c, h, w, generator=gen)
    ho, wo = out_side(h, pad[0], stride[0]), out_side(w, pad[1], stride[1])
    dout = torch.randn(n, o, ho, wo, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = conv_fast.conv3x3_weight_grad(x, dout, pad, stride)
    finally:
        torch.set_num_threads(before)
    assert got is not None
    close(got, reference(x, dout, pad, stride))


@needs_build
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 6), st.integers(1, 40), st.integers(3, 12),
    st.integers(3, 12), st.sampled_from([(0, 0), (1, 1), (0, 1), (2, 1)]),
    st.sampled_from([(1, 1), (2, 2), (1, 2)]), st.integers(0, 2**16),
)  # fmt: skip
def test_weight_gradient_on_random_shapes(n, c, o, h, w, pad, stride, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    ho, wo = out_side(h, pad[0], stride[0]), out_side(w, pad[1], stride[1])
    dout = torch.randn(n, o, ho, wo, generator=gen)
    got = conv_fast.conv3x3_weight_grad(x, dout, pad, stride)
    assert got is not None
    close(got, reference(x, dout, pad, stride))


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
    assert "conv_wgrad.c" in str(conv_fast.build.failure)
    x, dy = torch.randn(2, 3, 20, 20), torch.randn(2, 4, 20, 20)
    geometry = ConvGeometry((3, 3), padding=(1, 1))
    _, cache = conv2d_forward(x, torch.randn(4, 3, 3, 3), None, geometry, method="direct")
    close(conv2d_backward(dy, cache)[1], reference(x, dy, (1, 1)))


@needs_build
def test_the_layer_uses_it_and_agrees_with_autograd(monkeypatch) -> None:
    """A direct-method Conv2d with a 3x3 kernel takes the compiled gradient at every stride; a
    5x5 one does not. Its gradients equal autograd's. Counting the calls makes sure the test
    exercises the C code."""
    calls: list[int] = []
    real = conv_fast.conv3x3_weight_grad
    monkeypatch.setattr(conv_fast, "conv3x3_weight_grad", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    for k, stride, side, expected_calls in ((3, 1, 28, 1), (3, 2, 14, 1), (5, 1, 9, 0)):
        calls.clear()
        conv = Conv2d(8, 8, k, stride, padding=k // 2, bias=False, method="direct")
        x = torch.randn(4, 8, side, side)
        xr, w = x.clone().requires_grad_(), conv.weight.detach().clone().requires_grad_()
        ref = TF.conv2d(xr, w, None, stride, k // 2)
        dout = torch.randn_like(ref)
        ref.backward(dout)
        conv(x)
        dx = conv.backward(dout)
        assert len(calls) == expected_calls
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
