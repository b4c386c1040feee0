"""A user's own layers on handgrad's Module: ``forward(*args)`` and ``bwd(out, *args)`` that
assigns ``arg.g`` and ``param.g``."""

import torch

from handgrad import Module, Parameter


class Linear(Module):
    def __init__(self, n_in, n_out):
        self.w = Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.b = Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.w + self.b

    def bwd(self, out, x):
        x.g = out.g @ self.w.t()
        self.w.g = x.t() @ out.g
        self.b.g = out.g.sum(0)


class LinearTransposed(Linear):
    """BUG: dW transposed (square weights)."""

    def bwd(self, out, x):
        x.g = out.g @ self.w.t()
        self.w.g = (x.t() @ out.g).t()
        self.b.g = out.g.sum(0)


class LinearNoBiasGrad(Linear):
    """BUG: forgets b.g."""

    def bwd(self, out, x):
        x.g = out.g @ self.w.t()
        self.w.g = x.t() @ out.g


class Relu(Module):
    def forward(self, x):
        return x.clamp_min(0.0)

    def bwd(self, out, x):
        x.g = out.g * (x > 0)


class Tanh(Module):
    def forward(self, x):
        return x.tanh()

    def bwd(self, out, x):
        x.g = out.g * (1 - out * out)


class LayerNorm(Module):
    def __init__(self, n, eps=1e-5):
        self.gamma = Parameter(torch.ones(n))
        self.beta = Parameter(torch.zeros(n))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta

    def _var(self, x):
        return x.var(-1, keepdim=True, unbiased=False)

    def bwd(self, out, x):
        mu = x.mean(-1, keepdim=True)
        std = torch.sqrt(self._var(x) + self.eps)
        xhat = (x - mu) / std
        self.gamma.g = (out.g * xhat).sum(0)
        self.beta.g = out.g.sum(0)
        dxhat = out.g * self.gamma
        x.g = (
            dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True)
        ) / std


class LayerNormBesselBackward(LayerNorm):
    """BUG: the backward recomputes the variance with torch's default (N - 1)."""

    def _var(self, x):
        return x.var(-1, keepdim=True)


class BatchNorm(Module):
    """Train-mode batch norm; running statistics are buffers updated in place by forward."""

    def __init__(self, n, momentum=0.1, eps=1e-5):
        self.gamma = Parameter(torch.ones(n))
        self.beta = Parameter(torch.zeros(n))
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        mu = x.mean(0)
        var = x.var(0, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mu, self.momentum)
            self.running_var.lerp_(x.var(0), self.momentum)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta

    def _reduce(self, t):
        return t.mean(0)

    def bwd(self, out, x):
        std = torch.sqrt(x.var(0, unbiased=False) + self.eps)
        xhat = (x - x.mean(0)) / std
        self.gamma.g = (out.g * xhat).sum(0)
        self.beta.g = out.g.sum(0)
        dxhat = out.g * self.gamma
        x.g = (dxhat - self._reduce(dxhat) - xhat * self._reduce(dxhat * xhat)) / std


class BatchNormSumNotMean(BatchNorm):
    """BUG: sums where the formula needs means (a missing 1/N)."""

    def _reduce(self, t):
        return t.sum(0)


class Gate(Module):
    """``x * mask``; the mask gets no gradient (declared with no_grad_args)."""

    no_grad_args = (1,)

    def forward(self, x, mask):
        return x * mask

    def bwd(self, out, x, mask):
        x.g = out.g * mask


class GateForgetsMask(Gate):
    """BUG: passes out.g straight through."""

    def bwd(self, out, x, mask):
        x.g = out.g


class Huber(Module):
    def __init__(self, delta=1.0):
        self.delta = delta

    def forward(self, inp, targ):
        d = inp - targ
        small = d.abs() <= self.delta
        return torch.where(small, 0.5 * d**2, self.delta * (d.abs() - 0.5 * self.delta)).mean()

    def _slope(self, d):
        return self.delta * torch.sign(d)

    def bwd(self, out, inp, targ):
        d = inp - targ
        g = torch.where(d.abs() <= self.delta, d, self._slope(d))
        inp.g = g / d.numel() * out.g


class HuberWrongSign(Huber):
    """BUG: the linear region's slope has the wrong sign."""

    def _slope(self, d):
        return self.delta * torch.sign(-d)


class CrossEntropy(Module):
    def forward(self, inp, labels):
        logp = inp.log_softmax(-1)
        return -logp[torch.arange(inp.shape[0]), labels].mean()

    def _scale(self, inp):
        return 1 / inp.shape[0]

    def bwd(self, out, inp, labels):
        g = inp.softmax(-1)
        g[torch.arange(inp.shape[0]), labels] -= 1
        inp.g = g * self._scale(inp) * out.g


class CrossEntropyNoMean(CrossEntropy):
    """BUG: the mean's 1/N is forgotten."""

    def _scale(self, inp):
        return 1


class MSE(Module):
    def forward(self, inp, targ):
        return ((inp - targ) ** 2).mean()

    def _n(self, inp):
        return inp.numel()

    def bwd(self, out, inp, targ):
        inp.g = 2 * (inp - targ) / self._n(inp) * out.g


class MSERowsOnly(MSE):
    """BUG: divides by the batch size, but the mean is over every element."""

    def _n(self, inp):
        return inp.shape[0]


class LogSoftmax(Module):
    def forward(self, x):
        return x.log_softmax(-1)

    def bwd(self, out, x):
        x.g = out.g - out.exp() * out.g.sum(-1, keepdim=True)


class LogSoftmaxNoSum(LogSoftmax):
    """BUG: the sum over classes is forgotten."""

    def bwd(self, out, x):
        x.g = out.g - out.exp() * out.g


class Residual(Module):
    """``x + lin(relu(x))``: x is used twice, both paths must be summed."""

    def __init__(self, n):
        self.relu = Relu()
        self.lin = Linear(n, n)

    def forward(self, x):
        return x + self.lin(self.relu(x))

    def bwd(self, out, x):
        g = self.relu.backward(self.lin.backward(out.g))
        x.g = self._combine(out.g, g)

    def _combine(self, skip, branch):
        return skip + branch


class ResidualNoSkip(Residual):
    """BUG: forgets the skip path."""

    def _combine(self, skip, branch):
        return branch


class Tied(Module):
    """The same Linear used twice in one forward (weight tying)."""

    def __init__(self, n):
        self.lin = Linear(n, n)
        self.act = Tanh()

    def forward(self, x):
        return self.lin(self.act(self.lin(x)))

    def bwd(self, out, x):
        g = self.lin.backward(out.g)
        g = self.act.backward(g)
        x.g = self.lin.backward(g)


class MLP(Module):
    linear = Linear

    def __init__(self, n_in, nh, n_out):
        self.l1 = self.linear(n_in, nh)
        self.act = Relu()
        self.l2 = Linear(nh, n_out)

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))

    def bwd(self, out, x):
        x.g = self.l1.backward(self.act.backward(self.l2.backward(out.g)))


class MLPFirstNoBias(MLP):
    """BUG: its first layer forgets b.g."""

    linear = LinearNoBiasGrad
