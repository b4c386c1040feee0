"""The compiled batch norm (norm_kernels.c) against the readable formula in float64: outputs,
running statistics and gradients, with and without the ReLU (and with a residual added before
it), affine or not, over shapes and thread counts; the layers take it in float32 training;
where it cannot be built they run the ATen formulation unchanged."""

from __future__ import annotations

import pytest
import torch

from handgrad._build import Build
from handgrad.nn import functional as F
from handgrad.nn.functional import norm_fast
from handgrad.nn.functional.layout import layout_of, to_layout
from handgrad.nn.layers import BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d

needs_build = pytest.mark.skipif(
    not norm_fast.build.status()[0], reason=f"no compiled batch norm: {norm_fast.build.failure}"
)


def readable(x, gamma, beta, dout, relu, residual=None):
    """Output, mean, var and (dx, dgamma, dbeta) by the readable formula in float64 (with a
    ``residual``: ``relu(bn(x) + residual)``, whose gradient is the masked ``dout``)."""
    x64 = x.double()
    g64 = None if gamma is None else gamma.double()
    b64 = None if beta is None else beta.double()
    rm, rv = (
        torch.zeros(x.shape[1], dtype=torch.float64),
        torch.ones(x.shape[1], dtype=torch.float64),
    )
    out, cache = F.batchnorm_forward(x64, g64, b64, rm, rv, training=True, momentum=1.0)
    d = dout.double()
    if residual is not None:
        out = out + residual.double()
    if relu:
        d = d * (out > 0)
        out = out.clamp_min(0.0)
    dx, dgamma, dbeta = F.batchnorm_backward(d, cache)
    return out, rm, rv, dx, dgamma, dbeta


def close(got, want, what, tol=2e-5):
    err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1.0)
    assert err < tol, f"{what}: relative error {err:.2e}"


@needs_build
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    "shape", [(4, 3, 5, 5), (1, 2, 3, 3), (7, 5, 1, 9), (16, 16, 28, 28), (3, 4, 6)]
)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_equals_the_readable_formula(shape, affine, relu, threads, layout) -> None:
    if layout == "nhwc" and len(shape) != 4:
        pytest.skip("channels-last is a 4-d layout")
    gen = torch.Generator().manual_seed(sum(shape) + 10 * affine + relu)
    x = torch.randn(shape, generator=gen) * 3 + 2  # mean 2: a one-pass variance would cancel
    c = shape[1]
    gamma = torch.randn(c, generator=gen) if affine else None  # some negative
    beta = torch.randn(c, generator=gen) if affine else None
    dout = torch.randn(shape, generator=gen)
    out, rm, rv, dx, dgamma, dbeta = readable(x, gamma, beta, dout, relu)
    x, dout = to_layout(x, layout), to_layout(dout, layout)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = torch.zeros(c), torch.ones(c)
        forward = F.batchnorm_relu_forward if relu else F.fused_batchnorm_forward
        y, cache = forward(x, gamma, beta, *run, training=True, momentum=1.0)
        if relu:
            got = F.batchnorm_relu_backward(dout, y, cache, affine=affine)
        else:
            got = F.fused_batchnorm_backward(dout, cache, affine=affine)
    finally:
        torch.set_num_threads(before)
    agree(y, run, got, (out, rm, rv, dx, dgamma, dbeta), affine)
    in_layout(layout, y, got[0])


def in_layout(layout, *tensors) -> None:
    """The compiled kernels write in their input's layout (ATen's formulation writes NCHW:
    a channels-last output shows that the channels-last kernel ran)."""
    for t in tensors:
        assert layout_of(t) == layout, t.stride()


def agree(y, run, got, want, affine) -> None:
    """The compiled results (output, running statistics, gradients) against ``readable``'s."""
    out, rm, rv, dx, dgamma, dbeta = want
    close(y, out, "output")
    close(run[0], rm, "running mean")
    close(run[1], rv, "running var")  # unbiased, as PyTorch keeps it
    close(got[0], dx, "dx")
    if affine:
        close(got[1], dgamma, "dgamma", 1e-4)
        close(got[2], dbeta, "dbeta", 1e-4)
    else:
        assert got[1] is None and got[2] is None


@needs_build
def test_the_layers_call_it_in_float32_training_only(monkeypatch) -> None:
    calls: list[str] = []
    for name in ("forward", "backward"):
        real = getattr(norm_fast, name)
        monkeypatch.setattr(
            norm_fast, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a)
        )
    for layer in (BatchNorm2d(3), BatchNormReLU2d(3), BatchNormAddReLU2d(3)):
        x = torch.randn(4, 3, 5, 5)
        res = (x.flip(0),) if isinstance(layer, BatchNormAddReLU2d) else ()
        layer.backward(torch.randn_like(layer(x, *res)))
        layer.eval()
        layer(x, *res)  # evaluation: the running statistics, by ATen
        layer.train().double()
        layer(x.double(), *(r.double() for r in res))  # float64: the readable reference
    assert calls == ["forward", "backward"] * 3


@needs_build
def test_without_dx_only_the_parameter_gradients() -> None:
    x, dout = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    y, cache = F.batchnorm_relu_forward(x, torch.ones(2), torch.zeros(2), None, None, training=True)
    dx, dgamma, dbeta = F.batchnorm_relu_backward(dout, y, cache, need_dx=False)
    _, _, _, _, want_g, want_b = readable(x, torch.ones(2), torch.zeros(2), dout, True)
    assert dx is None
    close(dgamma, want_g, "dgamma", 1e-4)
    close(dbeta, want_b, "dbeta", 1e-4)


def test_no_compiler_means_the_aten_formulation(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(norm_fast, "build", Build(norm_fast._SOURCE, norm_fast._load))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    x, dout = torch.randn(4, 3, 5, 5) * 2 + 1, torch.randn(4, 3, 5, 5)
    gamma, beta = torch.randn(3), torch.randn(3)
    y, cache = F.batchnorm_relu_forward(x, gamma, beta, None, None, training=True)
    got = F.batchnorm_relu_backward(dout, y, cache)
    assert "norm_kernels.c" in str(norm_fast.build.failure)
    out, _, _, dx, dgamma, dbeta = readable(x, gamma, beta, dout, True)
    close(y, out, "output")
    close(got[0], dx, "dx")
    close(got[1], dgamma, "dgamma", 1e-4)
    close(got[2], dbeta, "dbeta", 1e-4)
    residual = torch.randn(4, 3, 5, 5)
    y, cache = F.batchnorm_add_relu_forward(x, residual, gamma, beta, None, None, training=True)
    got = F.batchnorm_add_relu_backward(dout, y, cache)
    out, _, _, dx, dgamma, dbeta = readable(x, gamma, beta, dout, True, residual)
    close(y, out, "output with a residual")
    close(got[0], dx, "dx with a residual")
    close(got[3], dout.double() * (out > 0), "dresidual")


@needs_build
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 3, 3), (7, 5, 1, 9), (16, 16, 28, 28)])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_with_a_residual_equals_the_readable_formula(shape, affine, threads, layout) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + affine)
    x = torch.randn(shape, generator=gen) * 3 + 2
    residual = torch.randn(shape, generator=gen) - 0.5  # ~half the sums end up below zero
    c = shape[1]
    gamma = torch.randn(c, generator=gen) if affine else None
    beta = torch.randn(c, generator=gen) if affine else None
    dout = torch.randn(shape, generator=gen)
    out, rm, rv, dx, dgamma, dbeta = readable(x, gamma, beta, dout, True, residual)
    x, residual, dout = (to_layout(t, layout) for t in (x, residual, dout))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = torch.zeros(c), torch.ones(c)
        y, cache = F.batchnorm_add_relu_forward(
            x, residual, gamma, beta, *run, training=True, momentum=1.0
        )
        got = F.batchnorm_add_relu_backward(dout, y, cache, affine=affine)
    finally:
        torch.set_num_threads(before)
    agree(y, run, got, (out, rm, rv, dx, dgamma, dbeta), affine)
    close(got[3], dout.double() * (out > 0), "dresidual")
    in_layout(layout, y, got[0], got[3])


@needs_build
def test_with_a_residual_only_what_is_asked() -> None:
    x, res, dout = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    y, cache = F.batchnorm_add_relu_forward(x, res, None, None, None, None, training=True)
    dx, _, _, dres = F.batchnorm_add_relu_backward(dout, y, cache, need_dresidual=False)
    assert dres is None and dx is not None
    dx, _, _, dres = F.batchnorm_add_relu_backward(dout, y, cache, need_dx=False)
    assert dx is None
    close(dres, dout.double() * (y > 0), "dresidual")


@needs_build
@pytest.mark.parametrize("threads", [1, 2])
def test_channels_last_statistics_far_from_zero(threads) -> None:
    """The channels-last forward sums x - k around each channel's first value in one pass:
    with a mean of 1000 and that first value 10 standard deviations out, the variance must
    still come out right (a plain sum of squares in float would lose it entirely)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 16, 7, 7, generator=gen) + 1000
    x[0, :, 0, 0] += 10
    dout = torch.randn(x.shape, generator=gen)
    out, _, rv, dx, _, _ = readable(x, None, None, dout, False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = torch.zeros(16), torch.ones(16)
        y, cache = F.fused_batchnorm_forward(
            to_layout(x, "nhwc"), None, None, *run, training=True, momentum=1.0
        )
        got = F.fused_batchnorm_backward(to_layout(dout, "nhwc"), cache, affine=False)
    finally:
        torch.set_num_threads(before)
    in_layout("nhwc", y, got[0])
    close(run[1], rv, "running var", 1e-4)
    close(y, out, "output", 1e-4)  # x near 1000 holds float32's 6e-5 spacing
    close(got[0], dx, "dx", 1e-3)


@needs_build
def test_mixed_layouts_are_computed_right() -> None:
    """A residual or a gradient in another layout than x: the forward falls back to ATen's
    formulation, the backward copies the gradient into x's layout; both stay exact."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 6, 6, generator=gen)
    residual, dout = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
    out, _, _, dx, _, _ = readable(x, None, None, dout, True, residual)
    y, cache = F.batchnorm_add_relu_forward(
        to_layout(x, "nhwc"), residual, None, None, None, None, training=True
    )
    close(y, out, "output")
    y, cache = F.batchnorm_add_relu_forward(
        to_layout(x, "nhwc"), to_layout(residual, "nhwc"), None, None, None, None, training=True
    )
    got = F.batchnorm_add_relu_backward(dout, y, cache)  # dout NCHW, x channels-last
    close(got[0], dx, "dx")
    in_layout("nhwc", got[0])


@pytest.mark.parametrize("training", [False, True])
def test_the_aten_formulation_keeps_channels_last(training) -> None:
    """Evaluation (running statistics) and float64 run ATen's formulation: on channels-last
    input its output stays channels-last (the next convolution would copy it back otherwise)
    and equals the NCHW result."""
    gen = torch.Generator().manual_seed(7)
    x, residual = torch.randn(4, 5, 6, 6, generator=gen), torch.randn(4, 5, 6, 6, generator=gen)
    gamma, beta = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    x, residual, gamma, beta = (t.double() for t in (x, residual, gamma, beta))
    outs = []
    for layout in ("nchw", "nhwc"):
        run = torch.randn(5, generator=gen).double(), torch.rand(5, generator=gen).double() + 0.5
        if layout == "nhwc":
            run = outs[0][1]
        y, _ = F.batchnorm_add_relu_forward(
            to_layout(x, layout), to_layout(residual, layout), gamma, beta,
            *(t.clone() for t in run), training=training,
        )  # fmt: skip
        outs.append((y, run))
    in_layout("nhwc", outs[1][0])
    torch.testing.assert_close(outs[1][0], outs[0][0])
