"""Layers on the lesson's own plain ``Module`` base (not handgrad's): ``__call__`` keeps
``self.args`` and ``self.out``; ``backward()`` calls ``self.bwd(self.out, *self.args)``."""

import torch


class Module:
    def __call__(self, *args):
        self.args = args
        self.out = self.forward(*args)
        return self.out

    def forward(self):
        raise Exception("not implemented")

    def bwd(self):
        raise Exception("not implemented")

    def backward(self):
        self.bwd(self.out, *self.args)


class Relu(Module):
    def forward(self, inp):
        return inp.clamp_min(0.0)

    def bwd(self, out, inp):
        inp.g = (inp > 0).float() * out.g


class ReluMaskOnGrad(Relu):
    """BUG: masks on the sign of the incoming gradient instead of the input."""

    def bwd(self, out, inp):
        inp.g = (out.g > 0).float() * out.g


class LeakyRelu(Module):
    def __init__(self, slope):
        self.slope = slope

    def forward(self, inp):
        return torch.where(inp > 0, inp, inp * self.slope)

    def bwd(self, out, inp):
        inp.g = torch.where(inp > 0, out.g, out.g * self.slope)


class LeakyReluNoSlope(LeakyRelu):
    """BUG: backward copied from Relu, the negative slope forgotten."""

    def bwd(self, out, inp):
        inp.g = (inp > 0).float() * out.g


class Lin(Module):
    def __init__(self, w, b):
        self.w, self.b = w, b

    def forward(self, inp):
        return inp @ self.w + self.b

    def bwd(self, out, inp):
        inp.g = out.g @ self.w.t()
        self.w.g = inp.t() @ out.g
        self.b.g = out.g.sum(0)


class LinBiasNotSummed(Lin):
    """BUG: the bias gradient is not summed over the batch."""

    def bwd(self, out, inp):
        inp.g = out.g @ self.w.t()
        self.w.g = inp.t() @ out.g
        self.b.g = out.g


class LinList(Module):
    """Weights in a list: ``LinList([w, b])``."""

    def __init__(self, params):
        self.params = params

    def forward(self, inp):
        w, b = self.params
        return inp @ w + b

    def bwd(self, out, inp):
        w, b = self.params
        inp.g = out.g @ w.t()
        w.g = inp.t() @ out.g
        b.g = out.g.sum(0)


class LinListNoTranspose(LinList):
    """BUG: dX uses w instead of w.t() (square weights, so the shape is right)."""

    def bwd(self, out, inp):
        w, b = self.params
        inp.g = out.g @ w
        w.g = inp.t() @ out.g
        b.g = out.g.sum(0)


class Affine(Module):
    """Weights in a dict: ``Affine({"w": w, "b": b})``."""

    def __init__(self, params):
        self.params = params

    def forward(self, inp):
        return inp @ self.params["w"] + self.params["b"]

    def bwd(self, out, inp):
        p = self.params
        inp.g = out.g @ p["w"].t()
        p["w"].g = inp.t() @ out.g
        p["b"].g = out.g.sum(0)


class AffineExtraMean(Affine):
    """BUG: divides dW by the batch size (an extra 1/N)."""

    def bwd(self, out, inp):
        p = self.params
        inp.g = out.g @ p["w"].t()
        p["w"].g = inp.t() @ out.g / inp.shape[0]
        p["b"].g = out.g.sum(0)


class ScaleShift(Module):
    """Per-feature scale and shift, parameters in a dict ``{"gamma": ..., "beta": ...}``."""

    def __init__(self, params):
        self.params = params

    def forward(self, inp):
        return inp * self.params["gamma"] + self.params["beta"]

    def bwd(self, out, inp):
        inp.g = out.g * self.params["gamma"]
        self.params["gamma"].g = (out.g * inp).sum(0)
        self.params["beta"].g = out.g.sum(0)


class ScaleShiftNoBeta(ScaleShift):
    """BUG: forgets the shift's gradient."""

    def bwd(self, out, inp):
        inp.g = out.g * self.params["gamma"]
        self.params["gamma"].g = (out.g * inp).sum(0)


class Sigmoid(Module):
    def forward(self, inp):
        return torch.sigmoid(inp)

    def bwd(self, out, inp):
        inp.g = out * (1 - out) * out.g


class SigmoidNoChain(Sigmoid):
    """BUG: the local derivative only, out.g forgotten."""

    def bwd(self, out, inp):
        inp.g = out * (1 - out)


class Tanh(Module):
    def forward(self, inp):
        return torch.tanh(inp)

    def bwd(self, out, inp):
        inp.g = (1 - out**2) * out.g


class TanhUsesInput(Tanh):
    """BUG: 1 - x**2 instead of 1 - tanh(x)**2."""

    def bwd(self, out, inp):
        inp.g = (1 - inp**2) * out.g


class Softmax(Module):
    def forward(self, inp):
        e = (inp - inp.max(-1, keepdim=True).values).exp()
        return e / e.sum(-1, keepdim=True)

    def bwd(self, out, inp):
        inp.g = out * (out.g - (out.g * out).sum(-1, keepdim=True))


class SoftmaxNoDiagonal(Softmax):
    """BUG: only the off-diagonal part of the Jacobian, -s_i s_j."""

    def bwd(self, out, inp):
        inp.g = -out * (out.g * out).sum(-1, keepdim=True)


class Embedding(Module):
    def __init__(self, w):
        self.w = w

    def forward(self, idx):
        return self.w[idx]

    def bwd(self, out, idx):
        g = torch.zeros_like(self.w)
        g.index_add_(0, idx, out.g)
        self.w.g = g


class EmbeddingLosesRepeats(Embedding):
    """BUG: fancy-index += keeps only one of repeated indices."""

    def bwd(self, out, idx):
        g = torch.zeros_like(self.w)
        g[idx] += out.g
        self.w.g = g
